"""``gemini-meter budgets``: on the database, and on a running proxy through the admin API.

Locally the commands run in this process through ``main(argv)`` (sync tests: each command
runs its own event loop); remotely as ``python -m proxy.cli.main`` subprocesses against a
proxy served on loopback by the test's loop, so they are awaited, not run blocking.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.cli.main import main
from proxy.server.keys import unseal
from proxy.server.typedefs import sessionmaker_key
from proxy.settings import Secret, Settings
from proxy.storage import budgets
from tests.factories import Stack, StackFactory

TOKEN = "admin-token-0123456789abcdef"
WEBHOOK = "https://hooks.example.test/services/cli-webhook-secret"
SETTINGS_ENV = (
    "GEMINI_METER_CONFIG",
    "GEMINI_METER_LOG_LEVEL",
    "GEMINI_METER_ADMIN_URL",
    *(f"GEMINI_METER_{name.upper()}" for name in Settings.names()),
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_METER_KEY_SECRET", "cli-budget-secret")
    monkeypatch.setenv("GEMINI_METER_KEY_SECRET_FILE", str(tmp_path / "secret"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_budgets_on_the_database(
    migrated_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_METER_DATABASE_URL", migrated_url)
    code, out, err = run(
        capsys,
        *("budgets", "set", "--scope", "team:research", "--limit-usd", "25.50"),
        *("--window", "monthly", "--timezone", "Europe/Paris", "--mode", "enforce"),
        *("--webhook", WEBHOOK, "--webhook-format", "slack"),
    )
    assert code == 0, err
    assert out.startswith("budget 1 created") and WEBHOOK not in out + err
    code, out, err = run(
        capsys,
        *("budgets", "set", "--scope", "key:7", "--limit-tokens", "5000", "--category"),
        *("thinking", "--window", "daily", "--mode", "alert", "--thresholds", "0.9", "1"),
    )
    assert code == 0 and "budget 2 created" in out

    code, out, _ = run(capsys, "budgets", "list", "--format", "json")
    listed = json.loads(out)
    assert [(b["id"], b["scope"], b["window"], b["mode"]) for b in listed] == [
        (1, "team:research", "monthly", "enforce"),
        (2, "key:7", "daily", "alert"),
    ]
    assert Decimal(listed[0]["limit_usd"]) == Decimal("25.50")
    assert listed[0]["webhook_configured"] is True and WEBHOOK not in out
    assert (listed[1]["limit_tokens"], listed[1]["category"]) == (5000, "thinking")
    assert listed[1]["thresholds"] == ["0.9", "1"]

    code, out, _ = run(capsys, "budgets", "list")
    header, first, second = out.strip().splitlines()
    assert header.split()[:3] == ["id", "scope", "limit"]
    assert "25.5 USD" in first and "Europe/Paris" in first and "slack" in first
    assert "5000 tokens" in second

    # Replace budget 2 in place.
    code, out, _ = run(
        capsys,
        *("budgets", "set", "--id", "2", "--scope", "global", "--limit-usd", "3"),
        *("--window", "total", "--mode", "enforce"),
    )
    assert code == 0 and "budget 2 updated" in out
    code, out, _ = run(capsys, "budgets", "status", "--format", "json")
    statuses = {s["budget"]["id"]: s for s in json.loads(out)}
    assert statuses[2]["budget"]["scope"] == "global" and statuses[2]["resets_at"] is None
    assert (statuses[2]["spend"], statuses[2]["exceeded"]) == ("0", False)
    # The monthly window in Paris starts at local midnight on the 1st.
    start = datetime.fromisoformat(statuses[1]["window_start"])
    local = start.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.day, local.hour, local.minute) == (1, 0, 0)
    assert start <= datetime.now(UTC) < datetime.fromisoformat(statuses[1]["resets_at"])

    code, out, err = run(capsys, "budgets", "delete", "2")
    assert (code, out.strip()) == (0, "budget 2 deleted")
    code, out, err = run(capsys, "budgets", "delete", "2")
    assert code == 1 and "no budget with id 2" in err
    code, out, err = run(
        capsys,
        *("budgets", "set", "--id", "9", "--scope", "global", "--limit-usd", "3"),
        *("--window", "total", "--mode", "enforce"),
    )
    assert code == 2 and "no budget with id 9" in err


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bad_budgets_name_the_flag(
    migrated_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_METER_DATABASE_URL", migrated_url)
    base = ["budgets", "set", "--scope", "global", "--window", "daily", "--mode", "alert"]
    cases = [
        (["--limit-usd", "0"], "--limit-usd: must be greater than 0"),
        (["--limit-usd", "1", "--scope", "crew:x"], "--scope: "),
        (["--limit-usd", "1", "--timezone", "Mars/Base"], "--timezone: "),
        (["--limit-usd", "1", "--thresholds", "0.8", "0.5"], "--thresholds: "),
        (["--limit-tokens", "9", "--category", "grounding"], "--category"),
        (["--limit-usd", "1", "--webhook", "http://hooks.example.test/x"], "--webhook: "),
    ]
    for extra, expected in cases:
        code, out, err = run(capsys, *base, *extra)
        assert code == 2 and expected in err, (extra, err)
        assert "Traceback" not in err and "hooks.example.test" not in err
    code, out, _ = run(capsys, "budgets", "list", "--format", "json")
    assert json.loads(out) == []
    # The group alone prints its help rather than an error.
    code, out, err = run(capsys, "budgets")
    assert code == 0 and "set" in out and "status" in out and "delete" in out


async def gemini_meter(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli.main",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_budgets_through_the_admin_api(make_stack: StackFactory, tmp_path: Path) -> None:
    stack: Stack = await make_stack(admin_token=Secret(TOKEN))
    # No database at all for the CLI: everything must go through the API.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_METER_")}
    env["GEMINI_METER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'not-used.db'}"
    env["GEMINI_METER_ADMIN_TOKEN"] = TOKEN
    url = stack.base_url

    code, out, err = await gemini_meter(
        *("budgets", "set", "--url", url, "--scope", "user:alice", "--limit-usd", "10"),
        *("--window", "weekly", "--mode", "enforce", "--webhook", WEBHOOK),
        env=env,
    )
    assert code == 0, err
    assert "budget 1 created" in out
    async with stack.app[sessionmaker_key]() as session:
        [row] = await budgets.list_budgets(session)
    assert (row.scope_kind, row.scope_name, row.window, row.mode) == (
        "user",
        "alice",
        "weekly",
        "enforce",
    )
    assert row.webhook_sealed is not None
    assert unseal(stack.settings.secret_bytes(), row.webhook_sealed) == WEBHOOK
    assert not (tmp_path / "not-used.db").exists()

    # The URL from the environment this time.
    env_url = {**env, "GEMINI_METER_ADMIN_URL": url}
    code, out, err = await gemini_meter("budgets", "list", "--format", "json", env=env_url)
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["id"], listed["scope"], listed["webhook_configured"]) == (1, "user:alice", True)

    code, out, err = await gemini_meter(
        *("budgets", "set", "--id", "1", "--scope", "team:support", "--limit-tokens", "99"),
        *("--window", "daily", "--mode", "alert"),
        env=env_url,
    )
    assert code == 0 and "budget 1 updated" in out
    code, out, err = await gemini_meter("budgets", "status", "--format", "json", env=env_url)
    [status] = json.loads(out)
    assert (status["budget"]["scope"], status["limit"], status["unit"]) == (
        "team:support",
        "99",
        "tokens",
    )

    code, out, err = await gemini_meter("budgets", "delete", "1", env=env_url)
    assert (code, out.strip()) == (0, "budget 1 deleted")
    code, out, err = await gemini_meter("budgets", "delete", "1", env=env_url)
    assert code == 1 and "no budget with id 1" in err

    # A wrong token is refused by the proxy; the CLI says so in one line, without the token.
    wrong: dict[str, Any] = {**env_url, "GEMINI_METER_ADMIN_TOKEN": TOKEN + "-wrong"}
    code, out, err = await gemini_meter("budgets", "list", env=wrong)
    assert code == 2 and "401" in err and "Traceback" not in err
    assert TOKEN not in out + err
    # No token at all: refused before any call.
    no_token = {k: v for k, v in env_url.items() if k != "GEMINI_METER_ADMIN_TOKEN"}
    code, out, err = await gemini_meter("budgets", "list", env=no_token)
    assert code == 2 and "GEMINI_METER_ADMIN_TOKEN" in err
