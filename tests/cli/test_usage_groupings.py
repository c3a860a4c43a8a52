"""``gemini-meter usage --group-by key|endpoint|label:NAME`` and ``--columns``, on SQLite
and PostgreSQL, against totals worked out by hand from the seeded records below."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from proxy.metering.records import Cost, EndpointKind, Principal
from proxy.storage import accounts, writes
from tests.cli.test_cli import TABLE_FIELDS, cli, day, in_session, usage

D = Decimal


def cost(inp: str, cached: str, inter: str, out: str, think: str) -> Cost:
    parts = [D(x) for x in (inp, cached, inter, out, think)]
    return Cost(
        total=sum(parts, D(0)),
        input=parts[0],
        cached=parts[1],
        intermediate=parts[2],
        output=parts[3],
        thinking=parts[4],
        grounding=D(0),
        catalog_version="hand",
    )


# (user, team, key name or None, endpoint, labels, usage, cost)
RECORDS: list[tuple[str, str, str | None, EndpointKind, dict[str, str], Any, Cost]] = [
    (  # R1: total 100+10+20+30 = 160, cost 0.61
        "alice",
        "research",
        "k1",
        EndpointKind.GENERATE_CONTENT,
        {"project": "atlas", "env": "prod"},
        usage(100, 0, 10, 20, 30),
        cost("0.1", "0", "0.01", "0.2", "0.3"),
    ),
    (  # R2: total 200+40 = 240, cost 0.605
        "alice",
        "research",
        "k2",
        EndpointKind.STREAM_GENERATE_CONTENT,
        {"project": "atlas"},
        usage(200, 50, 0, 40, 0),
        cost("0.2", "0.005", "0", "0.4", "0"),
    ),
    (  # R3: total 300+100+60+10 = 470, cost 1.1
        "bob",
        "support",
        "k3",
        EndpointKind.INTERACTION_CREATE,
        {"project": "borealis", "cost-center": "42"},
        usage(300, 0, 100, 60, 10),
        cost("0.3", "0", "0.1", "0.6", "0.1"),
    ),
    (  # R4: no key (passthrough), no labels: total 2, cost 0.011
        "bob",
        "support",
        None,
        EndpointKind.GENERATE_CONTENT,
        {},
        usage(1, 0, 0, 1, 0),
        cost("0.001", "0", "0", "0.01", "0"),
    ),
]


@pytest.fixture
def labelled_db(db: str, make_record) -> dict[str, Any]:
    """The database, and the ids the seeded keys got."""

    async def work(session: AsyncSession) -> dict[str, int]:
        key_ids: dict[str, int] = {}
        rows = []
        for user, team, key, endpoint, labels, used, spent in RECORDS:
            key_id = None
            if key is not None:
                if key not in key_ids:
                    info, _ = await accounts.create_key(session, b"secret", user, team)
                    key_ids[key] = info.id
                key_id = key_ids[key]
            user_row = await accounts.get_or_create_user(session, user, team)
            principal = Principal(user_row.id, user, user_row.team_id, team, key_id)
            record = make_record(
                principal,
                created_at=day("2026-03-01T10:00:00"),
                endpoint=endpoint,
                labels=labels,
                usage=used,
                cost=spent,
            )
            rows.append(writes.usage_values(record))
        await writes.insert_usage_rows(session, rows)
        return key_ids

    return {"url": db, "keys": in_session(db, work)}


def report(capsys, url: str, *flags: str) -> list[dict[str, Any]]:
    ran = cli(capsys, "usage", "--format", "json", "--database", url, *flags)
    assert ran.code == 0, ran.err
    rows: list[dict[str, Any]] = ran.json()
    return rows


def short(row: dict[str, Any], *keys: str) -> tuple[Any, ...]:
    return (*(row[k] for k in keys), row["requests"], row["total_tokens"], D(row["cost_usd"]))


def test_group_by_a_label(capsys, labelled_db):
    rows = report(capsys, labelled_db["url"], "--group-by", "label:project")
    assert [short(r, "label:project") for r in rows] == [
        (None, 1, 2, D("0.011")),  # R4 has no labels
        ("atlas", 2, 400, D("1.215")),  # R1 + R2
        ("borealis", 1, 470, D("1.1")),  # R3
    ]


def test_group_by_a_label_whose_name_needs_quoting(capsys, labelled_db):
    rows = report(capsys, labelled_db["url"], "--group-by", "label:cost-center")
    assert [short(r, "label:cost-center") for r in rows] == [
        (None, 3, 402, D("1.226")),  # R1 + R2 + R4
        ("42", 1, 470, D("1.1")),  # R3
    ]


def test_group_by_user_and_a_label(capsys, labelled_db):
    rows = report(capsys, labelled_db["url"], "--group-by", "user", "label:env")
    assert [short(r, "user", "label:env") for r in rows] == [
        ("alice", None, 1, 240, D("0.605")),  # R2
        ("alice", "prod", 1, 160, D("0.61")),  # R1
        ("bob", None, 2, 472, D("1.111")),  # R3 + R4
    ]


def test_group_by_key(capsys, labelled_db):
    keys = labelled_db["keys"]
    rows = report(capsys, labelled_db["url"], "--group-by", "key")
    assert [short(r, "key") for r in rows] == [
        (None, 1, 2, D("0.011")),  # R4, passthrough
        (keys["k1"], 1, 160, D("0.61")),
        (keys["k2"], 1, 240, D("0.605")),
        (keys["k3"], 1, 470, D("1.1")),
    ]


def test_group_by_endpoint(capsys, labelled_db):
    rows = report(capsys, labelled_db["url"], "--group-by", "endpoint")
    assert [short(r, "endpoint") for r in rows] == [
        ("generate_content", 2, 162, D("0.621")),  # R1 + R4
        ("interaction.create", 1, 470, D("1.1")),  # R3
        ("stream_generate_content", 1, 240, D("0.605")),  # R2
    ]
    # The categories of R1 + R4, summed by hand.
    generate = rows[0]
    assert [generate[k] for k in ("input_tokens", "intermediate_tokens", "thinking_tokens")] == [
        101,
        10,
        30,
    ]


def test_columns_narrow_the_report(capsys, labelled_db):
    ran = cli(
        capsys,
        *("usage", "--group-by", "endpoint", "--format", "csv"),
        *("--columns", "requests,total_tokens,cost_usd", "--database", labelled_db["url"]),
    )
    header, *rows = csv.reader(io.StringIO(ran.out))
    assert header == ["endpoint", "requests", "total_tokens", "cost_usd"]
    assert [(r[0], r[1], r[2], D(r[3])) for r in rows] == [
        ("generate_content", "2", "162", D("0.621")),
        ("interaction.create", "1", "470", D("1.1")),
        ("stream_generate_content", "1", "240", D("0.605")),
    ]


def test_the_table_shows_a_few_columns_by_default(capsys, labelled_db):
    out = cli(capsys, "usage", "--group-by", "team", "--database", labelled_db["url"]).out
    header, *lines = out.splitlines()
    assert header.split() == ["team", *TABLE_FIELDS]
    research = lines[0].split()
    # alice's R1 + R2: input 300, intermediate 10, output 60, thinking 30, total 400 =
    # 300 + 10 + 60 + 30: the default columns add up.
    assert research == ["research", "2", "300", "10", "60", "30", "400", "1.215000"]


def test_columns_all_and_json_default_carry_every_measure(capsys, labelled_db):
    every = report(capsys, labelled_db["url"], "--group-by", "team")
    chosen = report(capsys, labelled_db["url"], "--group-by", "team", "--columns", "all")
    assert set(every[0]) | {"unpriced_requests"} == set(chosen[0])
    assert len(chosen[0]) == 1 + 1 + 6 + 7 + 1  # team, requests, tokens, costs, unpriced
