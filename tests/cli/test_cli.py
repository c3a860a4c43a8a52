"""proxy.cli.main: every ``gemini-meter`` command, run the way a user runs it.

Most commands run in-process through ``main(argv)`` with ``capsys`` reading stdout
and stderr. Each command calls ``asyncio.run`` itself, so these are SYNC tests: the
database fixtures are async, but pytest-asyncio runs them on its own loop before the
test body starts, and no loop is running while the command does its work. Where a
separate process is the point (the demo, pricing what the proxy recorded, no
traceback reaching the terminal) the command runs as ``python -m proxy.cli.main``.

Commands that touch a database run on SQLite and PostgreSQL alike (``migrated_url``
and ``database_url`` are parametrized over both). PostgreSQL needs
``GEMINI_METER_KEY_SECRET``; on SQLite the generated secret goes to a file in
``tmp_path``, so nothing is written into the repository.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from proxy.cli.main import main
from proxy.metering.records import UNPRICED, Cost, Principal, Usage
from proxy.pricing.catalog import load_catalog
from proxy.server.keys import hash_key
from proxy.settings import Settings
from proxy.storage import accounts, writes
from proxy.storage import migrate as _migrate
from proxy.storage.schema import UsageRow, make_engine, make_sessionmaker
from tests.cli.conftest import PG_SECRET
from tests.factories import Stack
from tests.faults.helpers import free_port

# The usage table's default measures: the categories that add up to the total, and cost.
TABLE_FIELDS = (
    "requests",
    "input_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
    "cost_usd",
)

# A usage report's columns after the group keys, in order: what scripts reading
# `gemini-meter usage` rely on, so spelled out here rather than imported.
TOKEN_FIELDS = (
    "requests",
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
)
COST_FIELDS = (
    "cost_usd",
    "cost_input_usd",
    "cost_cached_usd",
    "cost_intermediate_usd",
    "cost_output_usd",
    "cost_thinking_usd",
    "cost_grounding_usd",
)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    """``gemini-meter ARGV`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def cli_process(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gemini-meter ARGV`` as its own process, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def in_session(url: str, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    """Run ``work(session)`` on ``url`` from a sync test, committing what it did."""

    async def go() -> Any:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(go())


def decimals(row: dict[str, Any], fields: tuple[str, ...] = COST_FIELDS) -> dict[str, Any]:
    """The money columns of a JSON row as ``Decimal`` (None stays None).

    The two databases spell the same amount differently (``"1.3"`` on one,
    ``"1.300000000000"`` on the other), so amounts are compared as numbers, after
    checking they arrived as strings and not as lossy JSON floats.
    """
    for name in fields:
        assert row[name] is None or isinstance(row[name], str), (name, row[name])
    return {name: None if row[name] is None else Decimal(row[name]) for name in fields}


# --- seeded usage records -----------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    user: str
    team: str | None
    model: str
    at: datetime
    usage: Usage
    cost: Cost


def usage(inp: int, cached: int, inter: int, out: int, think: int) -> Usage:
    return Usage(
        input_tokens=inp,
        cached_tokens=cached,
        intermediate_tokens=inter,
        output_tokens=out,
        thinking_tokens=think,
        total_tokens=inp + inter + out + think,
    )


def cost(inp: str, cached: str, inter: str, out: str, think: str, version: str = "old") -> Cost:
    i, c, m, o, t = (Decimal(x) for x in (inp, cached, inter, out, think))
    return Cost(
        total=i + c + m + o + t,
        input=i,
        cached=c,
        intermediate=m,
        output=o,
        thinking=t,
        grounding=Decimal(0),
        catalog_version=version,
    )


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Amounts use all 12 stored decimal places, so a sum that went through a float, or
# was rounded on the way, shows.
SEEDS = (
    Seed(
        "alice",
        "research",
        "gemini-2.5-flash",
        day("2026-03-01T10:00:00"),
        usage(1000, 100, 200, 300, 400),
        cost("0.100000000001", "0.000000000002", "0.3", "0.4", "0.5"),
    ),
    Seed(
        "alice",
        "research",
        "gemini-2.5-pro",
        day("2026-03-02T23:59:59"),
        usage(2000, 0, 0, 500, 0),
        cost("1.000000000009", "0", "0", "2.5", "0"),
    ),
    Seed(
        "bob",
        "support",
        "gemini-2.5-flash",
        day("2026-03-02T00:00:00"),
        usage(10, 0, 0, 5, 0),
        cost("0.000003", "0", "0", "0.000012", "0"),
    ),
    # No team, and unpriced: its group's cost is null, not zero.
    Seed(
        "carol",
        None,
        "gemini-2.5-flash",
        day("2026-03-03T12:00:00"),
        usage(7, 0, 0, 3, 0),
        UNPRICED,
    ),
)


def seed(url: str, make_record: Callable[..., Any], seeds: tuple[Seed, ...]) -> None:
    async def work(session: AsyncSession) -> None:
        rows = []
        for s in seeds:
            user = await accounts.get_or_create_user(session, s.user, s.team)
            principal = Principal(user.id, user.name, user.team_id, s.team)
            record = make_record(
                principal, model=s.model, created_at=s.at, usage=s.usage, cost=s.cost
            )
            rows.append(writes.usage_values(record))
        await writes.insert_usage_rows(session, rows)

    in_session(url, work)


@pytest.fixture
def usage_db(db: str, make_record: Callable[..., Any]) -> str:
    seed(db, make_record, SEEDS)
    return db


# --- keys ---------------------------------------------------------------------------------


def principal_for(url: str, key: str) -> Principal | None:
    """Who ``key`` bills to, looked up the way the proxy's auth does on a cache miss."""
    # The same settings the CLI built from this environment, so the same HMAC secret.
    secret = Settings(database_url=url).secret_bytes()
    found: Principal | None = in_session(
        url, lambda s: accounts.principal_for_key_hash(s, hash_key(secret, key))
    )
    return found


def test_keys_create_list_and_revoke(capsys, db, tmp_path):
    ran = cli(capsys, "keys", "create", "--user", "alice", "--team", "research", "--database", db)
    assert ran.code == 0
    # Scripts take the key from the last line: it must be there, alone.
    *before, key = ran.out.splitlines()
    assert re.fullmatch(r"gm-[A-Za-z0-9_-]{43}", key)
    assert before and all(key not in line for line in before)
    assert key not in ran.err and "shown once" in ran.err
    if db.startswith("sqlite"):
        assert (tmp_path / "gemini-meter.secret").is_file()

    principal = principal_for(db, key)
    assert principal is not None
    assert (principal.user_name, principal.team_name) == ("alice", "research")

    bob_key = cli(capsys, "keys", "create", "--user", "bob", "--database", db).out.splitlines()[-1]
    assert bob_key != key

    listed = cli(capsys, "keys", "list", "--format", "json", "--database", db)
    assert listed.code == 0
    # The list names keys by id and label only: neither key may appear anywhere in it.
    assert key not in listed.out and bob_key not in listed.out
    rows = listed.json()
    assert [(r["id"], r["user"], r["team"], r["revoked_at"]) for r in rows] == [
        (principal.key_id, "alice", "research", None),
        (rows[1]["id"], "bob", None, None),
    ]
    assert key.startswith(rows[0]["label"].removesuffix("..."))

    revoked = cli(capsys, "keys", "revoke", str(principal.key_id), "--database", db)
    assert (revoked.code, revoked.out.strip()) == (0, f"key {principal.key_id} revoked")
    assert principal_for(db, key) is None
    assert principal_for(db, bob_key) is not None  # only that key
    after = cli(capsys, "keys", "list", "--format", "json", "--database", db).json()
    assert after[0]["revoked_at"] is not None and after[1]["revoked_at"] is None

    # Revoking again, or an id that never existed, is an error a script can see.
    for key_id in (str(principal.key_id), "999"):
        again = cli(capsys, "keys", "revoke", key_id, "--database", db)
        assert again.code == 1
        assert again.err.strip() == f"no active key with id {key_id}"


def test_keys_list_as_csv_and_table_never_shows_the_key(capsys, db):
    key = cli(capsys, "keys", "create", "--user", "carol", "--database", db).out.splitlines()[-1]
    as_csv = cli(capsys, "keys", "list", "--format", "csv", "--database", db).out
    header, row = csv.reader(io.StringIO(as_csv))
    assert header == [
        "id",
        "label",
        "user",
        "team",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    assert row[2:4] == ["carol", ""] and row[5:] == ["", "", ""]
    as_table = cli(capsys, "keys", "list", "--database", db).out
    assert "carol" in as_table
    assert key not in as_csv and key not in as_table


# --- usage ----------------------------------------------------------------------------------

ALICE = {
    "requests": 2,
    "input_tokens": 3000,
    "cached_tokens": 100,
    "intermediate_tokens": 200,
    "output_tokens": 800,
    "thinking_tokens": 400,
    "total_tokens": 4400,
}
ALICE_COST = {
    "cost_usd": Decimal("4.800000000012"),
    "cost_input_usd": Decimal("1.100000000010"),
    "cost_cached_usd": Decimal("0.000000000002"),
    "cost_intermediate_usd": Decimal("0.3"),
    "cost_output_usd": Decimal("2.9"),
    "cost_thinking_usd": Decimal("0.5"),
    "cost_grounding_usd": Decimal(0),
}


def test_usage_json_groups_by_user_with_exact_sums(capsys, usage_db):
    ran = cli(capsys, "usage", "--format", "json", "--database", usage_db)
    assert ran.code == 0
    rows = ran.json()
    assert [r["user"] for r in rows] == ["alice", "bob", "carol"]
    # Exactly the group key, the token sums and the cost sums, in that order.
    assert all(list(r) == ["user", *TOKEN_FIELDS, *COST_FIELDS] for r in rows)
    alice, bob, carol = rows
    assert {k: alice[k] for k in TOKEN_FIELDS} == ALICE
    assert decimals(alice) == ALICE_COST
    assert (bob["requests"], bob["total_tokens"]) == (1, 15)
    assert decimals(bob)["cost_usd"] == Decimal("0.000015")
    # carol's one record is unpriced: her cost is unknown, not zero.
    assert (carol["requests"], carol["total_tokens"]) == (1, 10)
    assert set(decimals(carol).values()) == {None}


def test_usage_group_by_user_model_day(capsys, usage_db):
    group_by = ("--group-by", "user", "model", "day")
    rows = cli(capsys, "usage", *group_by, "--format", "json", "--database", usage_db).json()
    assert all(list(r)[:3] == ["user", "model", "day"] for r in rows)
    assert [(r["user"], r["model"], r["day"], r["requests"]) for r in rows] == [
        ("alice", "gemini-2.5-flash", "2026-03-01", 1),
        # 23:59:59 UTC is still the 2nd: days are UTC days on both databases.
        ("alice", "gemini-2.5-pro", "2026-03-02", 1),
        ("bob", "gemini-2.5-flash", "2026-03-02", 1),
        ("carol", "gemini-2.5-flash", "2026-03-03", 1),
    ]
    assert decimals(rows[1])["cost_usd"] == Decimal("3.500000000009")


def test_usage_group_by_team_puts_records_without_a_team_first(capsys, usage_db):
    rows = cli(capsys, "usage", "--group-by", "team", "--format", "json", "--database", usage_db)
    assert [(r["team"], r["requests"]) for r in rows.json()] == [
        (None, 1),
        ("research", 2),
        ("support", 1),
    ]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--user", "alice"], {"alice": (2, 4400)}),
        # The record's team, and carol (no team) matches no team filter.
        (["--team", "research"], {"alice": (2, 4400)}),
        (["--team", "support"], {"bob": (1, 15)}),
        (["--model", "gemini-2.5-pro"], {"alice": (1, 2500)}),
        (["--user", "alice", "--model", "gemini-2.5-flash"], {"alice": (1, 1900)}),
        # --since is inclusive, --until exclusive; naive times are UTC.
        (["--since", "2026-03-02"], {"alice": (1, 2500), "bob": (1, 15), "carol": (1, 10)}),
        (["--since", "2026-03-02", "--until", "2026-03-03"], {"alice": (1, 2500), "bob": (1, 15)}),
        (["--until", "2026-03-02"], {"alice": (1, 1900)}),
        # 01:00+01:00 is 00:00 UTC, which excludes bob's record at 00:00 UTC; read as
        # 01:00 UTC (the offset dropped) it would include it.
        (["--until", "2026-03-02T01:00:00+01:00"], {"alice": (1, 1900)}),
        (["--user", "nobody"], {}),
    ],
)
def test_usage_filters(capsys, usage_db, flags, expected):
    ran = cli(capsys, "usage", *flags, "--format", "json", "--database", usage_db)
    assert ran.code == 0
    got = {r["user"]: (r["requests"], r["total_tokens"]) for r in ran.json()}
    assert got == expected


def test_usage_csv_has_a_header_and_one_row_per_group(capsys, usage_db):
    out = cli(capsys, "usage", "--format", "csv", "--database", usage_db).out
    header, *rows = csv.reader(io.StringIO(out))
    assert header == ["user", *TOKEN_FIELDS, *COST_FIELDS]
    assert [r[0] for r in rows] == ["alice", "bob", "carol"]
    alice = dict(zip(header, rows[0], strict=True))
    assert {k: int(alice[k]) for k in TOKEN_FIELDS} == ALICE
    assert Decimal(alice["cost_usd"]) == ALICE_COST["cost_usd"]  # exact, not rounded
    assert rows[2][-len(COST_FIELDS) :] == [""] * len(COST_FIELDS)  # unpriced: empty cells


def test_usage_table_is_aligned_and_rounds_money_for_reading(capsys, usage_db):
    out = cli(capsys, "usage", "--columns", "all", "--database", usage_db).out
    header, *lines = out.splitlines()
    assert header.split() == ["user", *TOKEN_FIELDS, *COST_FIELDS, "unpriced_requests"]
    cells = {line.split()[0]: line.split() for line in lines}
    assert list(cells) == ["alice", "bob", "carol"]
    assert cells["alice"][1:8] == [str(ALICE[k]) for k in TOKEN_FIELDS]
    assert cells["alice"][8] == "4.800000"  # the table shows micro-dollars
    assert cells["carol"][8:] == ["-"] * len(COST_FIELDS) + ["1"]  # and unpriced_requests
    # Numbers are right-aligned: every row ends at the same column.
    assert len({len(line) for line in lines}) == 1


def test_usage_of_an_empty_database(capsys, db):
    assert cli(capsys, "usage", "--format", "json", "--database", db).json() == []
    assert cli(capsys, "usage", "--database", db).out.split() == ["user", *TABLE_FIELDS]


# --- price ------------------------------------------------------------------------------------

# The same counts in each API's spelling: 1000 prompt tokens (200 of them cached),
# 300 tool-use, 400 output, 500 thinking.
INTERACTIONS_USAGE = {
    "total_input_tokens": 1000,
    "total_cached_tokens": 200,
    "total_tool_use_tokens": 300,
    "total_output_tokens": 400,
    "total_thought_tokens": 500,
    "total_tokens": 2200,
}
GENERATE_USAGE = {
    "promptTokenCount": 1000,
    "cachedContentTokenCount": 200,
    "toolUsePromptTokenCount": 300,
    "candidatesTokenCount": 400,
    "thoughtsTokenCount": 500,
    "totalTokenCount": 2200,
}
# gemini-2.5-pro: input 1.25, cached 0.125, output 10.00 USD per 1M tokens.
PRO_STANDARD = {
    "input": "0.001",  # 800 uncached x 1.25 / 1M
    "cached": "0.000025",  # 200 x 0.125 / 1M
    "intermediate": "0.000375",  # 300 x 1.25 / 1M, billed as input
    "output": "0.004",  # 400 x 10 / 1M
    "thinking": "0.005",  # 500 x 10 / 1M, at the output rate
    "grounding": "0",
    "media": "0",
    "storage": "0",
}
PRICE_KEYS = {
    "model",
    "resolved_model",
    "service_tier",
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
    "cost_usd",
    "cost_breakdown_usd",
    "catalog_version",
}


def price_json(capsys, model: str, body: dict[str, Any], *flags: str) -> dict[str, Any]:
    ran = cli(
        capsys, "price", "--model", model, "--usage", json.dumps(body), "--format", "json", *flags
    )
    assert ran.code == 0, ran.err
    result: dict[str, Any] = ran.json()
    return result


@pytest.mark.parametrize(
    "body", [INTERACTIONS_USAGE, GENERATE_USAGE], ids=["interactions", "generate"]
)
def test_price_either_api_usage_object(capsys, body):
    result = price_json(capsys, "gemini-2.5-pro", body)
    assert set(result) == PRICE_KEYS
    assert result["resolved_model"] == "gemini-2.5-pro"
    assert result["service_tier"] == "standard"
    assert result["catalog_version"] == load_catalog().version
    assert [result[k] for k in TOKEN_FIELDS[1:]] == [1000, 200, 300, 400, 500, 2200]
    # Decimal strings exactly as computed: no float, no rounding.
    assert result["cost_breakdown_usd"] == PRO_STANDARD
    assert result["cost_usd"] == "0.0104"


def test_price_flex_halves_everything(capsys):
    result = price_json(capsys, "gemini-2.5-pro", INTERACTIONS_USAGE, "--service-tier", "flex")
    assert result["service_tier"] == "flex"
    assert result["cost_breakdown_usd"] == {
        "input": "0.0005",
        # flex halves cached tokens too (catalog 2026-11-29.2): 200 x 0.125 x 0.5 / 1M
        "cached": "0.0000125",
        "intermediate": "0.0001875",
        "output": "0.002",
        "thinking": "0.0025",
        "grounding": "0",
        "media": "0",
        "storage": "0",
    }
    assert result["cost_usd"] == "0.0052"


def test_price_of_an_unknown_model_is_null_not_zero(capsys):
    ran = cli(
        capsys,
        *("price", "--model", "gemini-9-ultra", "--format", "json"),
        *("--usage", json.dumps(INTERACTIONS_USAGE)),
    )
    assert ran.code == 1  # and the reason on stderr (test_explains)
    result = ran.json()
    assert result["resolved_model"] is None
    assert result["cost_usd"] is None
    assert set(result["cost_breakdown_usd"].values()) == {None}
    assert result["total_tokens"] == 2200  # the usage is still read


def test_price_table_format(capsys):
    ran = cli(
        capsys, "price", "--model", "models/gemini-2.5-pro", "--usage", json.dumps(GENERATE_USAGE)
    )
    fields = dict(line.split(maxsplit=1) for line in ran.out.splitlines())
    assert fields["resolved_model"] == "gemini-2.5-pro"  # the models/ prefix resolves
    assert fields["cost_usd"] == "0.0104"
    assert fields["cost_thinking_usd"] == "0.005"


@pytest.mark.parametrize(
    ("usage_arg", "reason"),
    [
        ("{not json", "--usage is not JSON"),
        ('{"foo": 1}', "--usage is not a usage object"),
        ('{"total_tokens": 5, "totalTokenCount": 5}', "--usage is not a usage object"),
    ],
)
def test_price_refuses_bad_usage(capsys, usage_arg, reason):
    ran = cli(capsys, "price", "--model", "gemini-2.5-pro", "--usage", usage_arg)
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.count("\n") == 1 and ran.err.startswith(f"gemini-meter: {reason}")


# --- prices -----------------------------------------------------------------------------------


def test_prices_json_lists_the_catalog(capsys):
    result = cli(capsys, "prices", "--format", "json").json()
    catalog = load_catalog()
    assert result["version"] == catalog.version
    # One row per dated entry of every model.
    assert sorted({e["model"] for e in result["entries"]}) == catalog.models()
    assert len(result["entries"]) == sum(len(catalog.entries(m)) for m in catalog.models())
    [pro] = [e for e in result["entries"] if e["model"] == "gemini-2.5-pro"]
    assert (pro["input"], pro["cached"], pro["output"]) == ("1.25", "0.125", "10.00")
    assert pro["effective_from"] == "2025-10-08"


@pytest.mark.parametrize("name", ["gemini-2.5-pro", "gemini-2.5-pro-preview-06-05"])
def test_prices_of_one_model_or_its_alias(capsys, name):
    result = cli(capsys, "prices", "--model", name, "--format", "json").json()
    assert [e["model"] for e in result["entries"]] == ["gemini-2.5-pro"]
    assert "gemini-2.5-pro-preview-06-05" in result["entries"][0]["aliases"]


def test_prices_table_names_the_catalog_version(capsys):
    out = cli(capsys, "prices", "--model", "gemini-2.5-flash-lite").out.splitlines()
    assert out[0] == f"price catalog {load_catalog().version} (USD per 1M tokens)"
    # Two dated entries: the cache price cut of 2025-11-18.
    assert [line.split()[0] for line in out[2:]] == ["gemini-2.5-flash-lite"] * 2


def test_prices_of_an_unknown_model_exits_1(capsys):
    ran = cli(capsys, "prices", "--model", "gemini-9-ultra")
    assert (ran.code, ran.out) == (1, "")
    assert ran.err.startswith("gemini-meter: model 'gemini-9-ultra' is not in the price catalog")


# --- reprice ----------------------------------------------------------------------------------

# A model the package catalog does not price (docs/pricing.md, "Not in the seed").
NEW_MODEL = "gemini-3.6-flash"
USER_CATALOG = f"""
[[models."{NEW_MODEL}"]]
effective_from = 2026-01-01
source = "https://ai.google.dev/gemini-api/docs/pricing"
read_on = 2026-11-24
confirmed = true
input = "1.50"
output = "7.50"
cached = "0.15"
tiers = {{ flex = "0.5", batch = "0.5", priority = "1.8" }}
"""
# 1M prompt tokens, 200k output, 100k thinking.
BIG = usage(1_000_000, 0, 0, 200_000, 100_000)
REPRICE_SEEDS = (
    # Priced by an older catalog at a rate since corrected: 2.5 Flash now gives
    # 0.30 + 200k x 2.50/1M + 100k x 2.50/1M = 1.05.
    Seed(
        "alice",
        "research",
        "gemini-2.5-flash",
        day("2026-03-01T10:00:00"),
        BIG,
        cost("0.2", "0", "0", "0.2", "0.1", version="2025-01-01.0"),
    ),
    # Unpriced when recorded; the user file prices them at 1.50 + 1.50 + 0.75 = 3.75.
    Seed("alice", "research", NEW_MODEL, day("2026-03-01T10:00:00"), BIG, UNPRICED),
    Seed("bob", "support", NEW_MODEL, day("2026-06-01T10:00:00"), BIG, UNPRICED),
)


def reprice(capsys, db: str, *flags: str) -> dict[str, Any]:
    """Run ``reprice`` and read its report back into numbers."""
    ran = cli(capsys, "reprice", *flags, "--database", db)
    assert ran.code == 0, ran.err
    first, total, *per_model = ran.out.splitlines()
    counts = re.fullmatch(
        r"catalog (\S+): examined (\d+) records, (\d+) changed cost, (\d+) restamped with the "
        r"catalog version, (\d+) newly priced, (\d+) now unpriced",
        first,
    )
    assert counts, first
    delta = re.fullmatch(r"total change: ([+-][\d.]+) USD", total)
    assert delta, total
    by_model = {}
    for line in per_model:
        model = re.fullmatch(r"  (\S+): ([+-][\d.]+) USD", line)
        assert model, line
        by_model[model.group(1)] = model.group(2)
    version, *numbers = counts.groups()
    return {
        "version": version,
        "counts": tuple(int(n) for n in numbers),  # examined, changed, restamped, new, gone
        "delta": Decimal(delta.group(1)),
        "by_model": {m: Decimal(d) for m, d in by_model.items()},
    }


def stored_costs(db: str) -> list[tuple[str, str, Decimal | None, str | None]]:
    """(model, day, cost, catalog version) of every record, in insertion order."""

    async def work(session: AsyncSession) -> Any:
        query = select(UsageRow).order_by(UsageRow.id)
        return [
            (r.model, r.created_at.date().isoformat(), r.cost_usd, r.catalog_version)
            for r in (await session.scalars(query)).all()
        ]

    found: list[tuple[str, str, Decimal | None, str | None]] = in_session(db, work)
    return found


def test_reprice_with_a_user_catalog(capsys, db, make_record, tmp_path, monkeypatch):
    seed(db, make_record, REPRICE_SEEDS)
    user_file = tmp_path / "prices.toml"
    user_file.write_text(USER_CATALOG)
    monkeypatch.setenv("GEMINI_METER_PRICE_CATALOG", str(user_file))
    version = load_catalog(user_file).version
    assert "+user." in version

    # --model and --since together: only bob's June record of the new model.
    done = reprice(capsys, db, "--model", NEW_MODEL, "--since", "2026-05-01")
    assert done["version"] == version
    assert done["counts"] == (1, 1, 0, 1, 0)
    assert done["delta"] == Decimal("3.75")
    assert done["by_model"] == {NEW_MODEL: Decimal("3.75")}
    assert stored_costs(db) == [
        ("gemini-2.5-flash", "2026-03-01", Decimal("0.5"), "2025-01-01.0"),
        (NEW_MODEL, "2026-03-01", None, None),
        (NEW_MODEL, "2026-06-01", Decimal("3.75"), version),
    ]

    # --model alone: the stale 2.5 Flash record, whatever its date.
    done = reprice(capsys, db, "--model", "gemini-2.5-flash")
    assert done["counts"] == (1, 1, 0, 0, 0)
    assert done["by_model"] == {"gemini-2.5-flash": Decimal("0.55")}
    assert stored_costs(db)[0] == ("gemini-2.5-flash", "2026-03-01", Decimal("1.05"), version)

    # Everything: only the one record still unpriced changes.
    done = reprice(capsys, db)
    assert done["counts"] == (3, 1, 0, 1, 0)
    assert done["by_model"] == {NEW_MODEL: Decimal("3.75")}
    after = stored_costs(db)
    assert [c for _, _, c, _ in after] == [Decimal("1.05"), Decimal("3.75"), Decimal("3.75")]

    # Idempotent: a second run finds nothing to do and writes nothing.
    done = reprice(capsys, db)
    assert done["counts"] == (3, 0, 0, 0, 0)
    assert (done["delta"], done["by_model"]) == (0, {})
    assert stored_costs(db) == after

    # Back to the package catalog: the new model's records lose their price again (never
    # a guess), and 2.5 Flash keeps its amount under the package's version.
    monkeypatch.delenv("GEMINI_METER_PRICE_CATALOG")
    done = reprice(capsys, db)
    assert done["counts"] == (3, 2, 1, 0, 2)
    assert done["delta"] == Decimal("-7.5")
    assert stored_costs(db) == [
        ("gemini-2.5-flash", "2026-03-01", Decimal("1.05"), load_catalog().version),
        (NEW_MODEL, "2026-03-01", None, None),
        (NEW_MODEL, "2026-06-01", None, None),
    ]
    # ... and what `usage` reports follows the stored costs.
    rows = cli(capsys, "usage", "--format", "json", "--database", db).json()
    assert [(r["user"], r["cost_usd"] and Decimal(r["cost_usd"])) for r in rows] == [
        ("alice", Decimal("1.05")),
        ("bob", None),
    ]


def test_reprice_of_an_empty_database(capsys, db):
    done = reprice(capsys, db)
    assert done["counts"] == (0, 0, 0, 0, 0) and done["delta"] == 0


# --- db ---------------------------------------------------------------------------------------


def table_names(url: str) -> set[str]:
    async def work(session: AsyncSession) -> set[str]:
        connection = await session.connection()
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))

    found: set[str] = in_session(url, work)
    return found


def test_db_upgrade_downgrade_upgrade(capsys, fresh_db):
    head = _migrate.head()
    schema = {"teams", "users", "api_keys", "interactions", "usage_records"}

    up = cli(capsys, "db", "upgrade", "--database", fresh_db)
    assert (up.code, up.out.strip()) == (0, f"database at revision {head}")
    assert schema <= table_names(fresh_db)

    down = cli(capsys, "db", "downgrade", "base", "--database", fresh_db)
    assert (down.code, down.out.strip()) == (0, "database at revision None")
    assert not table_names(fresh_db) & schema

    # Down to nothing and back: the schema is whole again and usable.
    again = cli(capsys, "db", "upgrade", "--database", fresh_db)
    assert (again.code, again.out.strip()) == (0, f"database at revision {head}")
    assert schema <= table_names(fresh_db)
    assert cli(capsys, "keys", "create", "--user", "dora", "--database", fresh_db).code == 0


# --- end to end: the proxy's record against `gemini-meter price` ------------------------------


async def test_price_subprocess_agrees_with_what_the_proxy_recorded(stack: Stack):
    client = stack.sdk("alice")
    interaction = await client.aio.interactions.create(
        model="gemini-3.5-flash",
        input="What is the sum of the first 50 prime numbers? Generate and run code for it.",
        tools=[{"type": "code_execution"}],
    )
    assert interaction.usage is not None
    body = interaction.usage.model_dump(mode="json", exclude_none=True)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy.cli.main", "price", "--model", "gemini-3.5-flash"),
        *("--usage", json.dumps(body), "--format", "json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    priced = json.loads(out)

    [record] = await stack.records()
    # Code execution bills tool-use and thinking tokens too, so those parts are checked.
    assert record["intermediate_tokens"] > 0 and record["thinking_tokens"] > 0
    assert [priced[k] for k in TOKEN_FIELDS[1:]] == [record[k] for k in TOKEN_FIELDS[1:]]
    assert priced["catalog_version"] == record["catalog_version"]
    assert Decimal(priced["cost_usd"]) == record["cost_usd"] > 0
    breakdown = {k: Decimal(v) for k, v in priced["cost_breakdown_usd"].items()}
    assert breakdown == {
        "input": record["cost_input_usd"],
        "cached": record["cost_cached_usd"],
        "intermediate": record["cost_intermediate_usd"],
        "output": record["cost_output_usd"],
        "thinking": record["cost_thinking_usd"],
        "media": record["cost_media_usd"],
        "storage": record["cost_storage_usd"],
        "grounding": record["cost_grounding_usd"],
    }


# --- demo -------------------------------------------------------------------------------------


def test_demo_runs_offline_and_leaves_a_database_to_report_on(capsys, tmp_path):
    # Its own emulator and proxy on loopback, so it needs no network and no key.
    demo = cli_process("demo", "--dir", str(tmp_path))
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr
    lines = demo.stdout.splitlines()
    assert "alice: code execution printed '5117'" in lines
    start = lines.index("Usage by user")
    header, *table = lines[start + 1 : lines.index("", start)]
    assert header.split()[:3] == ["user", "team", "requests"]
    shown = {row.split()[0]: row.split() for row in table}
    assert list(shown) == ["alice", "bob"]
    assert shown["alice"][1] == "research" and shown["bob"][1] == "support"

    url = f"sqlite+aiosqlite:///{tmp_path / 'gemini-meter.db'}"
    rows = cli(capsys, "usage", "--database", url, "--format", "json").json()
    assert [r["user"] for r in rows] == ["alice", "bob"]
    for row, (user, shown_row) in zip(rows, shown.items(), strict=True):
        # The code-execution examples bill tool-use and thinking tokens to both users.
        assert row["intermediate_tokens"] > 0 and row["thinking_tokens"] > 0, user
        # The demo's table and `usage` read the same records.
        assert shown_row[2:9] == [str(row[k]) for k in TOKEN_FIELDS]
        assert Decimal(row["cost_usd"]) > 0


# --- bad settings -----------------------------------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "env", "reason"),
    [
        (["usage", "--database", "mysql://x"], {}, "--database or GEMINI_METER_DATABASE_URL"),
        (["keys", "list", "--database", "sqlite:///x.db"], {}, "GEMINI_METER_DATABASE_URL"),
        # A shared database with no secret would hash keys differently per process.
        (
            ["keys", "list", "--database", "postgresql+asyncpg://u@127.0.0.1/x"],
            {},
            "GEMINI_METER_KEY_SECRET is required",
        ),
        (["usage"], {"GEMINI_METER_KEY_SECRET": "  "}, "GEMINI_METER_KEY_SECRET: must not be"),
        (["usage"], {"GEMINI_METER_PORT": "eighty"}, "GEMINI_METER_PORT: must be a whole number"),
        (["prices"], {"GEMINI_METER_PRICE_CATALOG": "{tmp}/missing.toml"}, "cannot read the price"),
        (["prices"], {"GEMINI_METER_PRICE_CATALOG": "{tmp}/broken.toml"}, "not valid TOML"),
        (["prices"], {"GEMINI_METER_CONFIG": "{tmp}/extra.toml"}, "unknown setting 'bogus'"),
    ],
)
def test_bad_settings_exit_2_with_one_line(capsys, monkeypatch, tmp_path, argv, env, reason):
    _write(tmp_path / "broken.toml", "[[models.x]\n")
    _write(tmp_path / "extra.toml", "bogus = 1\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    ran = cli(capsys, *argv)
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.count("\n") == 1 and ran.err.startswith("gemini-meter: ")
    assert reason in ran.err


def test_bad_settings_in_a_real_process_print_no_traceback():
    done = cli_process("usage", "--database", "mysql://x")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "gemini-meter: --database or GEMINI_METER_DATABASE_URL: must be "
        "sqlite+aiosqlite:///PATH or postgresql+asyncpg://..."
    ]


def test_a_config_file_that_is_not_toml_exits_2_with_one_line(capsys, monkeypatch, tmp_path):
    config = _write(tmp_path / "config.toml", "port = \n")
    ran = cli(capsys, "--config", config, "prices")
    assert ran.code == 2 and ran.err.startswith("gemini-meter: ")


def test_a_missing_config_file_exits_2(capsys, monkeypatch, tmp_path):
    missing = str(tmp_path / "no-such-config.toml")
    ran = cli(capsys, "--config", missing, "prices")
    assert ran.code == 2 and ran.err.startswith("gemini-meter: ")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
        "sqlite+aiosqlite:////nonexistent-dir/gemini-meter.db",
    ],
    ids=["postgresql-unreachable", "sqlite-unopenable"],
)
def test_an_unusable_database_exits_2_with_one_line(monkeypatch, url):
    monkeypatch.setenv("GEMINI_METER_KEY_SECRET", PG_SECRET)
    done = cli_process("usage", "--database", url)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gemini-meter: ")


def test_a_config_file_applies_to_its_command_only(capsys, tmp_path):
    config = _write(tmp_path / "config.toml", 'upstream = "http://127.0.0.1:1234"\n')
    before = os.environ.get("GEMINI_METER_CONFIG")
    ran = cli(capsys, "--config", config, "prices", "--model", "gemini-2.5-pro")
    assert ran.code == 0
    assert os.environ.get("GEMINI_METER_CONFIG") == before


@pytest.mark.parametrize("taken", ["port", "metrics port"])
def test_serve_on_a_port_already_taken_says_so_in_one_line(monkeypatch, taken: str):
    monkeypatch.setenv("GEMINI_METER_UPSTREAM_API_KEY", "upstream-key")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy, free = holder.getsockname()[1], free_port()
        port, metrics = (busy, free) if taken == "port" else (free, busy)
        done = cli_process("serve", "--port", str(port), "--metrics-port", str(metrics))
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"gemini-meter: cannot listen on 127.0.0.1:{busy}: Address already in use"
    )
    assert "Traceback" not in done.stderr and "database" not in done.stderr.splitlines()[-1]
