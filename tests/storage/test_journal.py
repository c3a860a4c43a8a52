"""proxy.storage.journal, alone and as the writer's hand-off: framing, group commit,
replay, trim, the size bound, slots; and the idempotent writes replay relies on."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from proxy.metering.recorder import Recorder
from proxy.metering.records import Cost, Principal, Usage
from proxy.pricing.catalog import load_catalog
from proxy.server.metrics import build_metrics
from proxy.settings import JournalFullPolicy
from proxy.storage.accounts import principal_for_user
from proxy.storage.journal import OWNER, USAGE, Journal, decode_frames, encode_frame
from proxy.storage.schema import UsageRow, make_engine
from proxy.storage.writer import UsageWriter
from proxy.storage.writes import usage_values


@pytest.fixture
async def alice(sessionmaker) -> Principal:
    async with sessionmaker.begin() as session:
        return await principal_for_user(session, "alice")


def _segments(journal: Journal) -> list[Path]:
    assert journal.slot is not None
    return sorted(journal.slot.glob("*.seg"))


async def _append_all(journal: Journal, rows: list[dict[str, Any]]) -> list[int | None]:
    tickets: list[int | None] = []
    for row in rows:
        assert journal.append(USAGE, row, tickets.append)
    await journal.flush()
    return tickets


async def _stored(sessionmaker: Any) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        result = await session.execute(select(UsageRow.__table__).order_by(UsageRow.id))
        return [dict(r) for r in result.mappings()]


def test_a_row_comes_back_exactly(make_record):
    principal = Principal(user_id=3, user_name="u", team_id=4, key_id=5)
    record = make_record(
        principal,
        created_at=datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC),
        labels={"$d": "not money", "team": "x"},
        interaction_id="int-1",
        provisional=True,
        # a figure a float would round
        cost=Cost(total=Decimal("0.100000000001"), input=Decimal("0.100000000001")),
        usage=Usage(input_tokens=7, total_tokens=7, input_by_modality={"text": 7}),
    )
    values = usage_values(record)
    data = encode_frame(USAGE, values) + encode_frame(OWNER, {"id": "int-1", "user_id": 3})
    rows, valid = decode_frames(data)
    assert valid == len(data)
    assert rows[0] == (USAGE, values)
    assert rows[0][1]["cost_usd"] == Decimal("0.100000000001")
    assert rows[0][1]["created_at"] == record.created_at
    assert rows[1] == (OWNER, {"id": "int-1", "user_id": 3})


def test_a_torn_or_corrupt_tail_ends_the_replay_of_its_segment():
    first, second = (
        encode_frame(USAGE, {"request_id": "a"}),
        encode_frame(USAGE, {"request_id": "b"}),
    )
    for cut in range(1, len(second)):
        rows, valid = decode_frames(first + second[:cut])
        assert [r[1]["request_id"] for r in rows] == ["a"]
        assert valid == len(first)
    flipped = bytearray(first + second)
    flipped[-2] ^= 0xFF  # a bit flipped in the last payload: its checksum fails
    rows, valid = decode_frames(bytes(flipped))
    assert [r[1]["request_id"] for r in rows] == ["a"]


async def test_rows_appended_in_one_tick_share_one_fsync(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**8)
    assert journal.open() == []
    try:
        tickets = await _append_all(journal, [{"request_id": str(i)} for i in range(200)])
        assert len(tickets) == 200 and None not in tickets
        assert journal.commits_total == 1
        assert journal.appended_total == 200
    finally:
        await journal.close()


async def test_with_a_sync_interval_rows_of_later_ticks_join_the_same_fsync(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**8, sync_interval=0.2)
    journal.open()
    durable: list[int | None] = []
    for i in range(3):
        assert journal.append(USAGE, {"request_id": f"r{i}"}, durable.append)
        await asyncio.sleep(0.01)  # later loop ticks, well within the interval
    assert durable == [] and journal.commits_total == 0
    await journal.flush()
    assert len(durable) == 3 and journal.commits_total == 1
    await journal.close()


async def test_a_row_is_in_its_segment_when_append_returns_and_durable_after_the_fsync(
    tmp_path,
):
    journal = Journal(tmp_path, max_bytes=10**8)
    journal.open()
    durable: list[int | None] = []

    journal.append(USAGE, {"request_id": "r1"}, durable.append)
    rows, _ = decode_frames(b"".join(p.read_bytes() for p in _segments(journal)))
    # written at once (the response may go out now) ...
    assert [v["request_id"] for _, v in rows] == ["r1"]
    # ... but handed to the database only once the group commit's fsync is done
    assert durable == [] and journal.commits_total == 0
    await journal.flush()
    assert len(durable) == 1 and durable[0] is not None and journal.commits_total == 1
    await journal.close()


async def test_unreleased_rows_are_replayed_and_released_ones_trimmed(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**8, segment_bytes=200)
    journal.open()
    tickets = []
    # several group commits, so that the small segments rotate
    for i in range(12):
        tickets += await _append_all(journal, [{"request_id": f"r{i}"}])
    assert len(_segments(journal)) > 2
    committed = [t for t in tickets[:6] if t is not None]
    journal.release(committed)
    await journal.close()

    again = Journal(tmp_path, max_bytes=10**8, segment_bytes=200)
    entries = again.open()
    # every row not released comes back, in order (whole segments: a segment is
    # trimmed only once every row in it is released)
    replayed = [e.values["request_id"] for e in entries]
    assert replayed[-6:] == [f"r{i}" for i in range(6, 12)]
    assert set(replayed) <= {f"r{i}" for i in range(12)}
    again.release(e.ticket for e in entries)
    await asyncio.sleep(0)
    await again.close()
    third = Journal(tmp_path, max_bytes=10**8)
    assert third.open() == []
    assert third.held_bytes == 0
    await third.close()


async def test_the_drop_policy_drops_and_counts_past_the_bound(tmp_path):
    frame = len(encode_frame(USAGE, {"request_id": "r0"}))
    journal = Journal(tmp_path, max_bytes=3 * frame, policy=JournalFullPolicy.DROP)
    journal.open()
    accepted = [journal.append(USAGE, {"request_id": f"r{i}"}, lambda t: None) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert journal.dropped_total == 2
    assert journal.admit()  # the drop policy never refuses a call
    await journal.flush()
    assert journal.held_bytes == 3 * frame
    await journal.close()


async def test_the_refuse_policy_refuses_admission_and_keeps_every_row(tmp_path):
    frame = len(encode_frame(USAGE, {"request_id": "r0"}))
    journal = Journal(tmp_path, max_bytes=2 * frame, policy=JournalFullPolicy.REFUSE)
    journal.open()
    assert journal.admit()
    tickets = await _append_all(journal, [{"request_id": f"r{i}"} for i in range(3)])
    # rows of calls already admitted are kept, past the bound
    assert journal.dropped_total == 0 and None not in tickets
    assert journal.full and not journal.admit() and journal.refused_total == 1
    # committed: the journal drains and admits again
    journal.release([t for t in tickets if t is not None])
    await journal.flush()
    assert journal.admit() and journal.held_bytes == 0
    await journal.close()


_KILLED_BEFORE_FSYNC = """
import asyncio, os, signal, sys
from pathlib import Path
from proxy.storage.journal import USAGE, Journal

async def main():
    journal = Journal(Path(sys.argv[1]), max_bytes=10**6)
    journal.open()
    for i in range(3):
        assert journal.append(USAGE, {"request_id": f"r{i}"}, lambda ticket: None)
    # killed before the loop ever runs the group commit: no fsync, no flush, no close
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_rows_written_before_a_sigkill_are_replayed_though_never_fsynced(tmp_path):
    died = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_FSYNC, str(tmp_path)], check=False)
    assert died.returncode == -signal.SIGKILL
    again = Journal(tmp_path, max_bytes=10**6)
    assert [e.values["request_id"] for e in again.open()] == ["r0", "r1", "r2"]
    await again.close()


async def test_a_row_that_cannot_be_encoded_is_refused_and_leaves_nothing(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**6)
    journal.open()
    tickets = await _append_all(journal, [{"request_id": "a"}])
    with pytest.raises(TypeError):
        journal.append(USAGE, {"request_id": "b", "oops": object()}, tickets.append)
    await _append_all(journal, [{"request_id": "c"}])
    await journal.close()
    again = Journal(tmp_path, max_bytes=10**6)
    # (the writer sends such a row on unjournaled); the journal holds the others
    assert [e.values["request_id"] for e in again.open()] == ["a", "c"]
    await again.close()


async def test_two_processes_never_share_a_journal(tmp_path):
    first, second = Journal(tmp_path, max_bytes=10**6), Journal(tmp_path, max_bytes=10**6)
    first.open()
    second.open()
    assert first.slot != second.slot
    await _append_all(second, [{"request_id": "in-slot-1"}])
    await second.close()
    await first.close()
    # a later process takes the first free slot, and adopts slot 1's rows: no process
    # holds that slot, and maybe none ever will again
    a, b = Journal(tmp_path, max_bytes=10**6), Journal(tmp_path, max_bytes=10**6)
    assert [e.values["request_id"] for e in a.open()] == ["in-slot-1"]
    assert b.open() == []
    await a.close()
    await b.close()


async def test_fewer_processes_adopt_the_rows_of_slots_no_one_holds_but_never_a_held_one(
    tmp_path,
):
    # three workers each leave a row behind (SIGKILL: nothing released)
    journals = [Journal(tmp_path, max_bytes=10**6) for _ in range(3)]
    for j in journals:
        j.open()
    for i, j in enumerate(journals):
        await _append_all(j, [{"request_id": f"w{i}"}])
    held = journals[2]  # still running
    for j in journals[:2]:
        await j.close()

    # one worker comes back: it replays slot 0's row and adopts slot 1's, not slot 2's
    alone = Journal(tmp_path, max_bytes=10**6)
    assert sorted(e.values["request_id"] for e in alone.open()) == ["w0", "w1"]
    assert alone.slot == tmp_path / "0"
    assert list((tmp_path / "1").glob("*.seg")) == []
    assert len(list((tmp_path / "2").glob("*.seg"))) == 1
    await alone.close()
    await held.close()
    # the held slot's rows, once its process is gone, are adopted in turn
    last = Journal(tmp_path, max_bytes=10**6)
    assert sorted(e.values["request_id"] for e in last.open()) == ["w0", "w1", "w2"]
    await last.close()


# ---------------------------------------------------------------- with the writer and a database


async def test_rows_left_by_a_writer_that_gave_up_are_written_on_the_next_start(
    tmp_path, sessionmaker, migrated_url, alice, make_record
):
    engine = make_engine(migrated_url)
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE usage_records RENAME TO usage_records_away"))
    await engine.dispose()
    journal = Journal(tmp_path, max_bytes=10**8)
    journal.open()
    writer = UsageWriter(sessionmaker, journal=journal, retry_initial_seconds=0.01)
    await writer.start()
    records = [make_record(alice) for _ in range(5)]
    for record in records:
        writer.submit(record)
    await writer.close(timeout=0.3)  # the database stays unusable: the writer gives up
    await journal.close()
    assert writer.dropped_total == 0  # not lost: kept in the journal
    engine = make_engine(migrated_url)
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE usage_records_away RENAME TO usage_records"))
    await engine.dispose()

    journal = Journal(tmp_path, max_bytes=10**8)
    writer = UsageWriter(sessionmaker, journal=journal)
    await writer.start()
    writer.replay(journal.open())
    await writer.flush()
    stored = await _stored(sessionmaker)
    assert sorted(r["request_id"] for r in stored) == sorted(r.request_id for r in records)
    assert all(r["cost_usd"] == Decimal("0.000015") for r in stored)
    await writer.close()
    await journal.close()


async def test_a_replay_of_rows_already_committed_doubles_nothing(
    tmp_path, sessionmaker, alice, make_record
):
    # a crash after the COMMIT, before the journal was trimmed: the rows are replayed
    journal = Journal(tmp_path, max_bytes=10**8)
    journal.open()
    writer = UsageWriter(sessionmaker, journal=journal)
    await writer.start()
    records = [make_record(alice), make_record(alice, interaction_id="int-9")]
    for record in records:
        writer.submit(record)
    # written to the journal as submit returns: copy what is on disk now, before the
    # commit trims it
    assert journal.slot is not None
    slot_files = {p.name: p.read_bytes() for p in _segments(journal)}
    await writer.flush()
    await writer.close()
    await journal.close()
    assert _segments(journal) == []  # a clean close trims everything committed
    for name, data in slot_files.items():
        (journal.slot / name).write_bytes(data)  # what a SIGKILL would have left

    again = Journal(tmp_path, max_bytes=10**8)
    entries = again.open()
    assert len(entries) == 2
    writer = UsageWriter(sessionmaker, journal=again)
    await writer.start()
    writer.replay(entries)
    await writer.flush()
    stored = await _stored(sessionmaker)
    assert sorted(r["request_id"] for r in stored) == sorted(r.request_id for r in records)
    await writer.close()
    await again.close()


async def test_a_provisional_row_is_replaced_by_the_terminal_one_never_the_reverse(
    sessionmaker, alice, make_record
):
    writer = UsageWriter(sessionmaker)
    await writer.start()
    partial = Usage(input_tokens=4, output_tokens=1, total_tokens=5)
    final = Usage(input_tokens=10, output_tokens=5, total_tokens=15)
    writer.submit(make_record(alice, interaction_id="int-p", provisional=True, usage=partial))
    await writer.flush()
    [row] = await _stored(sessionmaker)
    assert (row["provisional"], row["total_tokens"]) == (True, 5)
    terminal = make_record(alice, interaction_id="int-p", usage=final)
    writer.submit(terminal)
    await writer.flush()
    # a late provisional (a resumed stream cut again) and the terminal one again
    writer.submit(make_record(alice, interaction_id="int-p", provisional=True, usage=partial))
    writer.submit(terminal)
    await writer.flush()
    [row] = await _stored(sessionmaker)
    assert (row["provisional"], row["total_tokens"], row["request_id"]) == (
        False,
        15,
        terminal.request_id,
    )
    # both in one batch: still one row, the terminal one
    writer.submit(make_record(alice, interaction_id="int-q", usage=final))
    writer.submit(make_record(alice, interaction_id="int-q", provisional=True, usage=partial))
    await writer.flush()
    rows = [r for r in await _stored(sessionmaker) if r["interaction_id"] == "int-q"]
    assert [(r["provisional"], r["total_tokens"]) for r in rows] == [(False, 15)]
    await writer.close()


async def test_an_interaction_is_billed_only_once_its_record_is_journaled(
    tmp_path, sessionmaker, alice, make_record
):
    # a journal with room for nothing: the drop policy refuses the first record
    journal = Journal(tmp_path, max_bytes=1, policy=JournalFullPolicy.DROP)
    journal.open()
    writer = UsageWriter(sessionmaker, journal=journal)
    await writer.start()
    recorder = Recorder(load_catalog(None), writer, build_metrics(CollectorRegistry()))
    recorder.finish(make_record(alice, interaction_id="int-b"))
    await writer.flush()
    assert journal.dropped_total == 1
    # room again: a later poll of the same interaction is still billed
    journal.max_bytes = 10**8
    second = make_record(alice, interaction_id="int-b")
    recorder.finish(second)
    await writer.flush()
    assert [r["request_id"] for r in await _stored(sessionmaker)] == [second.request_id]
    # and once journaled, the next one is skipped
    recorder.finish(make_record(alice, interaction_id="int-b"))
    assert journal.appended_total == 1
    await writer.close()
    await journal.close()
