"""proxy.settings: where each value comes from, how text becomes a typed value, what is
refused, and that no secret is ever shown; and that ``serve`` loads no pydantic for it.

Expected values are the README's table of settings (names, defaults, precedence) and
hand-written conversions, not anything the module computes.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.settings import (
    AuthMode,
    EventLoop,
    JournalFullPolicy,
    Problem,
    Secret,
    Settings,
    SettingsError,
)

SECRET_TEXT = "do-not-show-this-admin-token"


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GEMINI_METER_CONFIG", *(f"GEMINI_METER_{n.upper()}" for n in Settings.names())):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default SQLite file's directory, "./"


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "gemini-meter.toml"
    path.write_text(text)
    monkeypatch.setenv("GEMINI_METER_CONFIG", str(path))


def test_defaults_are_the_readmes() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert settings.event_loop is EventLoop.AUTO
    assert settings.database_url == "sqlite+aiosqlite:///./gemini-meter.db"
    assert settings.upstream == "https://generativelanguage.googleapis.com"
    assert settings.auth_mode is AuthMode.VIRTUAL_KEYS
    assert settings.journal_full_policy is JournalFullPolicy.REFUSE
    assert settings.budget_reserve_usd == Decimal("0.01")
    assert (settings.writer_batch_size, settings.writer_flush_interval_seconds) == (500, 0.05)
    assert settings.passthrough_aliases == {}
    assert settings.upstream_api_key is None


def test_flags_beat_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, monkeypatch, "port = 9001\nhost = '127.0.0.2'\nworkers = 1\n")
    monkeypatch.setenv("GEMINI_METER_PORT", "9002")
    monkeypatch.setenv("GEMINI_METER_HOST", "127.0.0.3")
    settings = Settings(port=9003)
    assert settings.port == 9003  # flag over environment over file
    assert settings.host == "127.0.0.3"  # environment over file
    assert Settings().port == 9002
    monkeypatch.delenv("GEMINI_METER_PORT")
    assert Settings().port == 9001  # the file over the default


def test_variable_names_are_read_in_any_case_and_other_prefixed_ones_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("gemini_meter_writer_batch_size", "77")
    monkeypatch.setenv("GEMINI_METER_LOG_LEVEL", "DEBUG")  # read by the CLI, not a setting
    monkeypatch.setenv("GEMINI_METER_NO_SUCH_THING", "1")
    assert Settings().writer_batch_size == 77


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("journal_enabled", "no", False),
        ("journal_enabled", "OFF", False),
        ("journal_enabled", "0", False),
        ("access_log", "yes", True),
        ("access_log", "True", True),
        ("writer_batch_size", " 250 ", 250),
        ("writer_flush_interval_seconds", "0.5", 0.5),
        ("budget_reserve_usd", "0.0000001", Decimal("0.0000001")),  # exact, not a float
        ("journal_dir", "/var/lib/meter/journal", Path("/var/lib/meter/journal")),
        ("auth_mode", "passthrough", AuthMode.PASSTHROUGH),
        ("event_loop", "asyncio", EventLoop.ASYNCIO),
        ("passthrough_aliases", '{"k-3f2a": "alice"}', {"k-3f2a": "alice"}),
        ("metrics_port", "9464", 9464),
    ],
)
def test_text_from_the_environment_becomes_the_fields_type(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, expected: object
) -> None:
    monkeypatch.setenv(f"GEMINI_METER_{name.upper()}", text)
    value = getattr(Settings(), name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("port", "eighty", "must be a whole number"),
        ("port", "80.5", "must be a whole number"),
        ("port", "70000", "must be at most 65535"),
        ("workers", "0", "must be at least 1"),
        ("writer_batch_size", "0", "must be greater than 0"),
        ("budget_reserve_usd", "-0.01", "must be at least 0"),
        ("budget_reserve_usd", "lots", "must be a finite decimal number"),
        ("alert_interval_seconds", "nan", "must be a finite number"),
        ("alert_interval_seconds", "inf", "must be a finite number"),
        ("journal_enabled", "maybe", "must be true or false"),
        ("auth_mode", "open", "must be one of 'virtual_keys', 'passthrough'"),
        ("event_loop", "trio", "must be one of 'auto', 'uvloop', 'asyncio'"),
        ("passthrough_aliases", "{not json", "must be a JSON object of strings"),
        ("passthrough_aliases", '{"k": 1}', "must be a map of strings to strings"),
        ("upstream", "http://example.com", "must use https unless it is a loopback address"),
        ("database_url", "mysql://x", "must be sqlite+aiosqlite:///PATH"),
        ("budget_timezone", "Mars/Olympus", "unknown IANA time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_value_is_refused_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, reason: str
) -> None:
    monkeypatch.setenv(f"GEMINI_METER_{name.upper()}", text)
    with pytest.raises(SettingsError) as refused:
        Settings()
    (problem,) = refused.value.problems
    assert problem.field == name and reason in problem.message


def test_every_bad_value_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_METER_PORT", "-1")
    monkeypatch.setenv("GEMINI_METER_JOURNAL_ENABLED", "perhaps")
    with pytest.raises(SettingsError) as refused:
        Settings()
    assert [p.field for p in refused.value.problems] == ["port", "journal_enabled"]


def test_a_key_in_the_file_that_is_no_setting_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, monkeypatch, "port = 9001\nprot = 9002\n")
    with pytest.raises(SettingsError) as refused:
        Settings()
    assert refused.value.problems == [Problem("prot", "is not a setting", unknown=True)]


def test_a_config_file_that_cannot_be_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_METER_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="GEMINI_METER_CONFIG: cannot read"):
        Settings()


def test_an_unknown_keyword_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="'prot'"):
        Settings(prot=1)
    with pytest.raises(TypeError, match="'prot'"):
        Settings().replace(prot=1)


def test_a_rule_across_fields_is_checked_after_the_fields(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="GEMINI_METER_KEY_SECRET is required"):
        Settings(database_url="postgresql+asyncpg://meter@127.0.0.1/meter")
    shared = Settings(database_url="postgresql+asyncpg://meter@127.0.0.1/meter", key_secret="k")
    assert not shared.is_sqlite


def test_no_secret_is_shown_in_a_repr_an_error_or_a_pickle_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(admin_token=SECRET_TEXT, upstream_api_key=SECRET_TEXT)
    assert isinstance(settings.admin_token, Secret)
    assert settings.admin_token.get_secret_value() == SECRET_TEXT
    assert SECRET_TEXT not in repr(settings) and SECRET_TEXT not in str(settings.admin_token)
    # A refused secret is not repeated in the reason.
    monkeypatch.setenv("GEMINI_METER_REDIS_URL", "http://user:" + SECRET_TEXT + "@host")
    with pytest.raises(SettingsError) as refused:
        Settings()
    assert SECRET_TEXT not in str(refused.value)
    # A worker process gets the settings pickled: the secret survives, still masked.
    monkeypatch.delenv("GEMINI_METER_REDIS_URL")
    copied = pickle.loads(pickle.dumps(settings))
    assert copied == settings and copied.admin_token is not None
    assert copied.admin_token.get_secret_value() == SECRET_TEXT


def test_replace_checks_the_change_and_leaves_the_original(tmp_path: Path) -> None:
    settings = Settings(port=9400)
    moved = settings.replace(port=9500, metrics_port=9501)
    assert (moved.port, moved.metrics_port, settings.port, settings.metrics_port) == (
        9500,
        9501,
        9400,
        None,
    )
    with pytest.raises(SettingsError, match="metrics_port"):
        settings.replace(metrics_port=9400)
    # The map default is never shared between instances.
    one: Any = Settings().passthrough_aliases
    one["x"] = "y"
    assert Settings().passthrough_aliases == {}


def test_serve_reads_its_settings_without_loading_pydantic() -> None:
    # pydantic with pydantic-settings was about 85 ms of a 0.58 s start to ready.
    probe = (
        "import sys\n"
        "from proxy.settings import load_settings\n"
        "import proxy.server.run, proxy.server.app\n"
        "load_settings(port=9400)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('pydantic', 'pydantic_core', 'pydantic_settings')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
