"""proxy.storage.journal, alone and as the writer's hand-off: framing, group commit,
replay, trim, the size bound, slots; and the idempotent writes replay relies on."""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import sys
import threading
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from proxy.metering.recorder import Recorder
from proxy.metering.records import Cost, Principal, Usage
from proxy.pricing.catalog import load_catalog
from proxy.server.metrics import build_metrics
from proxy.settings import JournalFullPolicy
from proxy.storage.accounts import principal_for_user
from proxy.storage.journal import (
    _LAYOUTS,
    OWNER,
    USAGE,
    Journal,
    OnDurable,
    _Worker,
    decode_frames,
    encode_frame,
)
from proxy.storage.schema import Interaction, UsageRow, make_engine
from proxy.storage.writer import UsageWriter
from proxy.storage.writes import OWNER_COLUMNS, USAGE_COLUMNS, owner_row, usage_row

_AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _row(name: str) -> tuple[Any, ...]:
    """A small row for the journal's own tests: the owner of interaction ``name``."""
    return owner_row(name, Principal(user_id=1, user_name="u"), None, _AT)


@pytest.fixture
async def alice(sessionmaker) -> Principal:
    async with sessionmaker.begin() as session:
        return await principal_for_user(session, "alice")


def _noting(tickets: list[int | None]) -> OnDurable:
    """A durability callback that notes the tickets it is given."""
    return lambda kind, values, ticket: tickets.append(ticket)


def _segments(journal: Journal) -> list[Path]:
    assert journal.slot is not None
    return sorted(journal.slot.glob("*.seg"))


async def _append_all(journal: Journal, rows: list[tuple[Any, ...]]) -> list[int | None]:
    tickets: list[int | None] = []
    for row in rows:
        assert journal.append(OWNER, row, _noting(tickets))
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
    values = usage_row(record)
    owner = owner_row("int-1", principal, None, record.created_at)
    data = encode_frame(USAGE, values) + encode_frame(OWNER, owner)
    rows, valid = decode_frames(data)
    assert valid == len(data)
    assert rows == [(USAGE, USAGE_COLUMNS, values), (OWNER, OWNER_COLUMNS, owner)]
    stored = dict(zip(USAGE_COLUMNS, rows[0][2], strict=True))
    assert stored["cost_usd"] == Decimal("0.100000000001")
    assert stored["created_at"] == datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC)
    assert stored["labels"] == {"$d": "not money", "team": "x"}
    # the column names are not in the frame: only the layout's number
    assert b"request_id" not in data and b'["usage",1,[' in data


def test_a_frame_whose_values_do_not_fit_its_layout_ends_the_replay():
    good = encode_frame(OWNER, _row("a"))
    short = b'["owner",1,["b",1,null,null,null]]'
    unknown = b'["owner",99,["c",1,null,null,null,"2026-11-29T12:00:00+00:00"]]'
    for payload in (short, unknown):
        frame = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
        rows, valid = decode_frames(good + frame)
        assert [r[2][0] for r in rows] == ["a"] and valid == len(good)


def test_a_torn_or_corrupt_tail_ends_the_replay_of_its_segment():
    first, second = (
        encode_frame(OWNER, _row("a")),
        encode_frame(OWNER, _row("b")),
    )
    for cut in range(1, len(second)):
        rows, valid = decode_frames(first + second[:cut])
        assert [r[2][0] for r in rows] == ["a"]
        assert valid == len(first)
    flipped = bytearray(first + second)
    flipped[-2] ^= 0xFF  # a bit flipped in the last payload: its checksum fails
    rows, valid = decode_frames(bytes(flipped))
    assert [r[2][0] for r in rows] == ["a"]


async def test_rows_appended_in_one_tick_share_one_fsync(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**8)
    assert journal.open() == []
    try:
        tickets = await _append_all(journal, [_row(str(i)) for i in range(200)])
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
        assert journal.append(OWNER, _row(f"r{i}"), _noting(durable))
        await asyncio.sleep(0.01)  # later loop ticks, well within the interval
    assert durable == [] and journal.commits_total == 0
    await journal.flush()
    assert len(durable) == 3 and journal.commits_total == 1
    await journal.close()


async def test_the_journal_thread_runs_its_jobs_in_order_and_hands_back_each_outcome(caplog):
    worker = _Worker()
    ran: list[tuple[str, int]] = []

    def job(name: str) -> str:
        ran.append((name, threading.get_ident()))
        return name.upper()

    def broken() -> None:
        raise OSError(5, "Input/output error")

    worker.submit(job, "delete")  # not awaited: runs before the next one all the same
    worker.submit(broken)  # a housekeeping failure is logged, and the thread goes on
    assert await worker.run(job, "fsync") == "FSYNC"
    with pytest.raises(OSError, match="Input/output error"):
        await worker.run(broken)
    # a waiter that gave up: its job still runs, and its outcome finds no one to tell
    gone = asyncio.ensure_future(worker.run(job, "abandoned"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await worker.run(job, "close") == "CLOSE"
    assert gone.cancelled()
    assert [name for name, _ in ran] == ["delete", "fsync", "abandoned", "close"]
    # one thread, not the loop's, and named for the journal
    (ident,) = {ident for _, ident in ran}
    thread = worker._thread
    assert thread is not None and thread.ident == ident != threading.get_ident()
    assert thread.name == "gemini-meter-journal"
    assert "journal housekeeping failed: [Errno 5] Input/output error" in caplog.text
    worker.shutdown()
    assert not thread.is_alive()


async def test_closing_the_journal_ends_its_thread(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**8)
    journal.open()
    await _append_all(journal, [_row("r1")])
    thread = journal._worker._thread
    assert thread is not None and thread.is_alive()
    await journal.close()
    assert not thread.is_alive()


async def test_a_row_is_in_its_segment_when_append_returns_and_durable_after_the_fsync(
    tmp_path,
):
    journal = Journal(tmp_path, max_bytes=10**8)
    journal.open()
    durable: list[int | None] = []

    journal.append(OWNER, _row("r1"), _noting(durable))
    rows, _ = decode_frames(b"".join(p.read_bytes() for p in _segments(journal)))
    # written at once (the response may go out now) ...
    assert [v[0] for _, _, v in rows] == ["r1"]
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
        tickets += await _append_all(journal, [_row(f"r{i}")])
    assert len(_segments(journal)) > 2
    committed = [t for t in tickets[:6] if t is not None]
    journal.release(committed)
    await journal.close()

    again = Journal(tmp_path, max_bytes=10**8, segment_bytes=200)
    entries = again.open()
    # every row not released comes back, in order (whole segments: a segment is
    # trimmed only once every row in it is released)
    replayed = [e.values[0] for e in entries]
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
    frame = len(encode_frame(OWNER, _row("r0")))
    journal = Journal(tmp_path, max_bytes=3 * frame, policy=JournalFullPolicy.DROP)
    journal.open()
    accepted = [journal.append(OWNER, _row(f"r{i}"), lambda *_: None) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert journal.dropped_total == 2
    assert journal.admit()  # the drop policy never refuses a call
    await journal.flush()
    assert journal.held_bytes == 3 * frame
    await journal.close()


async def test_the_refuse_policy_refuses_admission_and_keeps_every_row(tmp_path):
    frame = len(encode_frame(OWNER, _row("r0")))
    journal = Journal(tmp_path, max_bytes=2 * frame, policy=JournalFullPolicy.REFUSE)
    journal.open()
    assert journal.admit()
    tickets = await _append_all(journal, [_row(f"r{i}") for i in range(3)])
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
from proxy.storage.journal import OWNER, Journal

async def main():
    journal = Journal(Path(sys.argv[1]), max_bytes=10**6)
    journal.open()
    for i in range(3):
        assert journal.append(OWNER, (f"r{i}", 1, None, None, None, None), lambda *_: None)
    # killed before the loop ever runs the group commit: no fsync, no flush, no close
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_rows_written_before_a_sigkill_are_replayed_though_never_fsynced(tmp_path):
    died = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_FSYNC, str(tmp_path)], check=False)
    assert died.returncode == -signal.SIGKILL
    again = Journal(tmp_path, max_bytes=10**6)
    assert [e.values[0] for e in again.open()] == ["r0", "r1", "r2"]
    await again.close()


async def test_a_row_that_cannot_be_encoded_is_refused_and_leaves_nothing(tmp_path):
    journal = Journal(tmp_path, max_bytes=10**6)
    journal.open()
    tickets = await _append_all(journal, [_row("a")])
    with pytest.raises(TypeError):
        journal.append(OWNER, (*_row("b")[:-1], object()), _noting(tickets))
    # a row that does not fit its layout: replayed, it would have ended the replay of
    # the rows after it in its segment
    with pytest.raises(ValueError):
        journal.append(OWNER, _row("b")[:-1], _noting(tickets))
    await _append_all(journal, [_row("c")])
    await journal.close()
    again = Journal(tmp_path, max_bytes=10**6)
    # (the writer sends such a row on unjournaled); the journal holds the others
    assert [e.values[0] for e in again.open()] == ["a", "c"]
    await again.close()


async def test_two_processes_never_share_a_journal(tmp_path):
    first, second = Journal(tmp_path, max_bytes=10**6), Journal(tmp_path, max_bytes=10**6)
    first.open()
    second.open()
    assert first.slot != second.slot
    await _append_all(second, [_row("in-slot-1")])
    await second.close()
    await first.close()
    # a later process takes the first free slot, and adopts slot 1's rows: no process
    # holds that slot, and maybe none ever will again
    a, b = Journal(tmp_path, max_bytes=10**6), Journal(tmp_path, max_bytes=10**6)
    assert [e.values[0] for e in a.open()] == ["in-slot-1"]
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
        await _append_all(j, [_row(f"w{i}")])
    held = journals[2]  # still running
    for j in journals[:2]:
        await j.close()

    # one worker comes back: it replays slot 0's row and adopts slot 1's, not slot 2's
    alone = Journal(tmp_path, max_bytes=10**6)
    assert sorted(e.values[0] for e in alone.open()) == ["w0", "w1"]
    assert alone.slot == tmp_path / "0"
    assert list((tmp_path / "1").glob("*.seg")) == []
    assert len(list((tmp_path / "2").glob("*.seg"))) == 1
    await alone.close()
    await held.close()
    # the held slot's rows, once its process is gone, are adopted in turn
    last = Journal(tmp_path, max_bytes=10**6)
    assert sorted(e.values[0] for e in last.open()) == ["w0", "w1", "w2"]
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


# A usage row and its interaction's owner as the previous release journaled them (the
# first frame format: a JSON object of column values), copied from a segment it wrote.
_OLD_USAGE_FRAME = (
    b"\x88\x04\x00\x00K=~\x87"
    b'{"k":"usage","v":{"request_id":"req-old-1","created_at":"2026-11-28T23:30:00.250000-05:00",'
    b'"user_id":1,"team_id":null,"key_id":null,"model":"gemini-2.5-flash",'
    b'"endpoint":"generate_content","streamed":false,"upstream_status":200,'
    b'"latency_seconds":0.5,"ttfb_seconds":null,"interaction_id":"v1_old","resource":null,'
    b'"response_id":null,"previous_interaction_id":null,"requested_service_tier":null,'
    b'"effective_service_tier":null,"labels":{"team":"ml"},"input_tokens":1000,'
    b'"cached_tokens":0,"intermediate_tokens":0,"output_tokens":200,"thinking_tokens":0,'
    b'"total_tokens":1200,"total_mismatch":false,'
    b'"modalities":{"input":{"TEXT":1000},"output":{"TEXT":200}},"grounding":{},"images":0,'
    b'"video_seconds":0,"storage_token_seconds":0,"code_execution_calls":0,'
    b'"code_execution_errors":0,"parse_error":false,"client_disconnected":false,'
    b'"provisional":false,"estimated":false,"unmetered_route":false,'
    b'"cost_usd":"0.000800000001","cost_input_usd":"0.000300000001","cost_cached_usd":null,'
    b'"cost_intermediate_usd":null,"cost_output_usd":"0.0005","cost_thinking_usd":null,'
    b'"cost_grounding_usd":null,"cost_media_usd":null,"cost_storage_usd":null,'
    b'"catalog_version":"old","unpriced":false}}'
)
_OLD_OWNER_FRAME = (
    b"\x8e\x00\x00\x001\xc6C\x03"
    b'{"k":"owner","v":{"id":"v1_old","user_id":1,"team_id":null,"key_id":null,'
    b'"model":"gemini-2.5-flash","created_at":"2026-11-28T23:29:00+00:00"}}'
)


def test_layout_1_is_the_columns_the_previous_release_journaled_by_name():
    # A frame names its layout, not its columns: a release that changes a row's columns
    # must add a layout (and keep this one), or the frames already on disk would be
    # read into the wrong columns.
    old = orjson.loads(_OLD_USAGE_FRAME[8:])["v"]
    assert _LAYOUTS[(USAGE, 1)] == tuple(old) == USAGE_COLUMNS
    assert set(USAGE_COLUMNS) == {c.name for c in UsageRow.__table__.columns} - {"id"}
    assert set(OWNER_COLUMNS) == {c.name for c in Interaction.__table__.columns}
    assert _LAYOUTS[(OWNER, 1)] == tuple(orjson.loads(_OLD_OWNER_FRAME[8:])["v"])


async def test_a_journal_left_by_the_previous_release_is_replayed_after_the_upgrade(
    tmp_path, sessionmaker, alice, make_record
):
    assert alice.user_id == 1  # the user the old frames name
    slot = tmp_path / "0"
    slot.mkdir()
    # the old release's frames, then a frame of this one after the upgrade
    newer = make_record(alice)
    segment = _OLD_OWNER_FRAME + _OLD_USAGE_FRAME + encode_frame(USAGE, usage_row(newer))
    (slot / "000000000007.seg").write_bytes(segment)

    journal = Journal(tmp_path, max_bytes=10**8)
    entries = journal.open()
    assert [(e.kind, e.values[0]) for e in entries] == [
        (OWNER, "v1_old"),
        (USAGE, "req-old-1"),
        (USAGE, newer.request_id),
    ]
    writer = UsageWriter(sessionmaker, journal=journal)
    await writer.start()
    writer.replay(entries)
    await writer.flush()
    await writer.close()
    await journal.close()
    assert writer.written_total == 3 and writer.failed_rows_total == 0
    assert list(slot.glob("*.seg")) == []  # released once committed: trimmed

    async with sessionmaker() as session:
        owner = await session.get(Interaction, "v1_old")
        old = await session.scalar(select(UsageRow).where(UsageRow.request_id == "req-old-1"))
    assert owner is not None and owner.user_id == 1
    assert owner.created_at == datetime(2026, 11, 28, 23, 29, tzinfo=UTC)
    assert old is not None
    # 23:30:00.25 at UTC-5 is 04:30:00.25 the next day in UTC
    assert old.created_at == datetime(2026, 11, 29, 4, 30, 0, 250000, tzinfo=UTC)
    assert (old.cost_usd, old.cost_input_usd, old.cost_output_usd, old.cost_cached_usd) == (
        Decimal("0.000800000001"),
        Decimal("0.000300000001"),
        Decimal("0.0005"),
        None,
    )
    assert (old.interaction_id, old.labels, old.total_tokens) == ("v1_old", {"team": "ml"}, 1200)
    assert old.modalities == {"input": {"TEXT": 1000}, "output": {"TEXT": 200}}
    assert (old.endpoint, old.streamed, old.ttfb_seconds) == ("generate_content", False, None)


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
