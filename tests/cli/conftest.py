"""What every CLI test shares: an environment of its own, and a database of each kind.

Commands read ``GEMINI_METER_*``; ``clean_env`` (autouse) clears them, so a
developer's shell never changes a result and nothing is written into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.settings import Settings

# Every variable the CLI's settings read: a developer's shell must not change results.
SETTINGS_ENV = (
    "GEMINI_METER_CONFIG",
    "GEMINI_METER_LOG_LEVEL",
    *(f"GEMINI_METER_{name.upper()}" for name in Settings.names()),
)
PG_SECRET = "cli-test-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    # The embedded default keeps its generated HMAC secret here, and a command run
    # without --database its database: nothing is ever written into the repository.
    monkeypatch.setenv("GEMINI_METER_KEY_SECRET_FILE", str(tmp_path / "gemini-meter.secret"))
    monkeypatch.setenv(
        "GEMINI_METER_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'default.db'}"
    )


def _needs_secret(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # A shared (PostgreSQL) database refuses to start without an explicit secret.
    if url.startswith("postgresql"):
        monkeypatch.setenv("GEMINI_METER_KEY_SECRET", PG_SECRET)
    return url


@pytest.fixture
def db(migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database of each kind, with the environment the CLI needs for it."""
    return _needs_secret(migrated_url, monkeypatch)


@pytest.fixture
def fresh_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty, never migrated database of each kind."""
    return _needs_secret(database_url, monkeypatch)
