"""proxy.storage.writer: batching, flushing, outages, duplicates, bad rows, the queue limit."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select, text

from proxy.metering.records import Principal, Usage
from proxy.storage.accounts import interaction_owner, principal_for_user
from proxy.storage.journal import USAGE, Entry
from proxy.storage.migrate import upgrade_async
from proxy.storage.schema import UsageRow, make_engine, make_sessionmaker
from proxy.storage.writer import UsageWriter
from proxy.storage.writes import USAGE_COLUMNS, usage_row

WRITER_LOG = "proxy.storage.writer"


@pytest.fixture
async def writers(sessionmaker):
    """``writers(**options)`` makes writers with fast retries; all closed afterwards."""
    made: list[UsageWriter] = []

    def make(maker=None, **options):
        options = {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **options}
        writer = UsageWriter(maker or sessionmaker, **options)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        await writer.close(timeout=10)


@pytest.fixture
async def alice(sessionmaker) -> Principal:
    async with sessionmaker.begin() as session:
        return await principal_for_user(session, "alice")


async def _rows(sessionmaker: Any) -> list[tuple[str, str | None]]:
    async with sessionmaker() as session:
        result = await session.execute(select(UsageRow.request_id, UsageRow.interaction_id))
        return [tuple(r) for r in result]


async def _eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_many_submits_make_few_transactions(writers, alice, make_record, sessionmaker):
    batches: list[float] = []  # one duration per batch written, each one transaction
    writer = writers(batch_size=100, max_batch_size=100, flush_interval=60, on_batch=batches.append)
    await writer.start()
    records = [make_record(alice) for _ in range(250)]
    for record in records:
        writer.submit(record)
    assert writer.queued == 250

    # Two full batches go at once; the other 50 wait for the interval or a flush.
    async def two_batches_written():
        return writer.written_total == 200

    await _eventually(two_batches_written)
    await asyncio.sleep(0.05)
    assert (len(batches), writer.queued) == (2, 50)

    await writer.flush()
    assert (len(batches), writer.queued, writer.written_total) == (3, 0, 250)
    assert sorted(r for r, _ in await _rows(sessionmaker)) == sorted(r.request_id for r in records)
    assert writer.last_success is not None
    assert writer.failed_batches_total == writer.dropped_total == writer.failed_rows_total == 0


async def test_rows_queued_behind_a_batch_go_together_up_to_the_maximum(
    writers, alice, make_record, sessionmaker
):
    batches: list[float] = []
    writer = writers(batch_size=100, max_batch_size=300, flush_interval=60, on_batch=batches.append)
    for _ in range(450):  # queued before the writer runs: it is 4.5 batches behind
        writer.submit(make_record(alice))
    await writer.start()
    await writer.flush()
    # 300 in one transaction, then the 150 left (a full batch's worth: written at once)
    assert (len(batches), writer.written_total, writer.queued) == (2, 450, 0)
    assert len(await _rows(sessionmaker)) == 450
    with pytest.raises(ValueError, match="max_batch_size"):
        UsageWriter(sessionmaker, batch_size=100, max_batch_size=99)


async def test_flushes_on_interval(writers, alice, make_record, sessionmaker):
    batches: list[float] = []
    writer = writers(batch_size=1000, flush_interval=0.05, on_batch=batches.append)
    await writer.start()
    started = time.monotonic()
    for _ in range(3):
        writer.submit(make_record(alice))

    async def all_written():
        return len(await _rows(sessionmaker)) == 3

    await _eventually(all_written)
    assert time.monotonic() - started >= 0.05
    assert len(batches) == 1


async def test_close_flushes_everything(writers, alice, make_record, sessionmaker, caplog):
    writer = writers(batch_size=1000, flush_interval=60)
    await writer.start()
    for _ in range(10):
        writer.submit(make_record(alice))
    await writer.close()
    assert len(await _rows(sessionmaker)) == 10
    assert writer.queued == 0

    with caplog.at_level(logging.ERROR, logger=WRITER_LOG):
        writer.submit(make_record(alice))
        writer.submit(make_record(alice))
    assert writer.dropped_total == 2
    assert len(caplog.records) == 1 and "closed" in caplog.records[0].getMessage()
    await writer.close()  # closing twice is harmless
    with pytest.raises(RuntimeError):
        await writer.start()


async def test_rows_submitted_before_start_are_kept(writers, alice, make_record, sessionmaker):
    started = writers(flush_interval=60)
    never_started = writers(flush_interval=60)
    started.submit(make_record(alice))
    never_started.submit(make_record(alice))
    with pytest.raises(RuntimeError, match="not running"):
        await started.flush()
    await started.start()
    await started.flush()
    await never_started.close()
    assert len(await _rows(sessionmaker)) == 2


async def test_flush_with_nothing_queued_returns_at_once(writers):
    writer = writers()
    await writer.flush()  # not even started: nothing to wait for
    await writer.start()
    await asyncio.wait_for(writer.flush(), 1)


async def test_duplicate_interaction_ids_are_recorded_once(
    writers, alice, make_record, sessionmaker
):
    writer = writers(batch_size=2, flush_interval=60)
    await writer.start()
    for _ in range(3):  # two batches, and twice in the first one
        writer.submit(make_record(alice, interaction_id="int-1"))
    writer.submit(make_record(alice, interaction_id="int-2"))
    await writer.flush()
    writer.submit(make_record(alice, interaction_id="int-1"))
    await writer.flush()
    assert sorted(str(i) for _, i in await _rows(sessionmaker)) == ["int-1", "int-2"]
    assert writer.written_total == 5  # handled, duplicates included


async def test_interaction_owners(writers, alice, sessionmaker):
    async with sessionmaker.begin() as session:
        bob = await principal_for_user(session, "bob")
    writer = writers()
    await writer.start()
    writer.submit_owner("int-1", alice, "gemini-2.5-pro")
    writer.submit_owner("int-1", bob, None)  # a second claim changes nothing
    writer.submit_owner("int-2", bob, None)
    await writer.flush()
    async with sessionmaker() as session:
        assert await interaction_owner(session, "int-1") == alice
        assert await interaction_owner(session, "int-2") == bob


async def _rename(url: str, old: str, new: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    finally:
        await engine.dispose()


async def test_no_record_is_lost_across_an_outage(
    writers, alice, make_record, sessionmaker, migrated_url, caplog
):
    writer = writers(batch_size=20, flush_interval=0.01, attempts_before_split=2)
    await writer.start()
    records = [make_record(alice, interaction_id=f"int-{i}") for i in range(10)]
    for record in records[:5]:
        writer.submit(record)
    await writer.flush()

    await _rename(migrated_url, "usage_records", "usage_records_away")
    with caplog.at_level(logging.WARNING, logger=WRITER_LOG):
        for record in records[5:]:
            writer.submit(record)
        writer.submit_owner("int-7", alice, None)

        # Several failed attempts, row-by-row fallbacks among them.
        async def failing_for_a_while():
            return writer.failed_batches_total >= 6

        await _eventually(failing_for_a_while)
        assert writer.queued == 6
        await _rename(migrated_url, "usage_records_away", "usage_records")
        await asyncio.wait_for(writer.flush(), 10)

    rows = await _rows(sessionmaker)
    assert sorted(r for r, _ in rows) == sorted(r.request_id for r in records)
    assert len({i for _, i in rows}) == 10
    # A missing table is the database's trouble, not the rows': nothing dropped.
    assert (writer.failed_rows_total, writer.dropped_total, writer.queued) == (0, 0, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retrying with backoff" in m for m in messages) == 1  # not once per attempt
    assert any("written again after" in m for m in messages)
    async with sessionmaker() as session:
        assert await interaction_owner(session, "int-7") == alice


@pytest.mark.postgresql
async def test_no_record_is_lost_when_connections_are_killed(postgres_url, alice_pg, make_record):
    engine = make_engine(postgres_url)
    try:
        writer = UsageWriter(
            make_sessionmaker(engine),
            batch_size=10,
            flush_interval=0.01,
            retry_initial_seconds=0.01,
            retry_max_seconds=0.05,
        )
        await writer.start()
        records = [make_record(alice_pg) for _ in range(200)]
        admin = make_engine(postgres_url)
        try:
            for index, record in enumerate(records):
                writer.submit(record)
                if index % 40 == 0:
                    async with admin.connect() as connection:
                        await connection.execute(
                            text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                            )
                        )
                await asyncio.sleep(0.001)
            await asyncio.wait_for(writer.flush(), 20)
            await writer.close()
            async with admin.connect() as connection:
                stored = (
                    (await connection.execute(text("SELECT request_id FROM usage_records")))
                    .scalars()
                    .all()
                )
        finally:
            await admin.dispose()
    finally:
        await engine.dispose()
    assert sorted(stored) == sorted(r.request_id for r in records)
    assert writer.dropped_total == 0


@pytest.fixture
async def alice_pg(postgres_url):
    await upgrade_async(postgres_url)
    engine = make_engine(postgres_url)
    try:
        async with make_sessionmaker(engine).begin() as session:
            return await principal_for_user(session, "alice")
    finally:
        await engine.dispose()


async def test_a_row_the_database_refuses_does_not_wedge_the_writer(
    writers, alice, make_record, sessionmaker, caplog
):
    writer = writers(batch_size=100, flush_interval=0.01, attempts_before_split=2)
    await writer.start()
    good = [make_record(alice) for _ in range(4)]
    ghost = make_record(Principal(user_id=987_654, user_name="ghost"))  # no such user
    naive = make_record(alice, created_at=datetime(2025, 1, 1))  # refused while binding
    with caplog.at_level(logging.ERROR, logger=WRITER_LOG):
        for record in [good[0], ghost, good[1], naive, good[2]]:
            writer.submit(record)
        await asyncio.wait_for(writer.flush(), 10)
    assert sorted(r for r, _ in await _rows(sessionmaker)) == sorted(r.request_id for r in good[:3])
    assert writer.failed_rows_total == 2
    assert writer.written_total == 3
    assert sum("refused" in r.getMessage() for r in caplog.records) == 2

    writer.submit(good[3])
    await asyncio.wait_for(writer.flush(), 10)
    assert len(await _rows(sessionmaker)) == 4


async def test_drops_only_beyond_the_queue_limit(writers, alice, make_record, sessionmaker, caplog):
    writer = writers(queue_limit=5, flush_interval=60)
    with caplog.at_level(logging.WARNING, logger=WRITER_LOG):
        for _ in range(8):
            writer.submit(make_record(alice))
        assert (writer.queued, writer.dropped_total) == (5, 3)
        assert len(caplog.records) == 1  # once per burst, not once per record
        await writer.start()
        await writer.flush()
        writer.submit(make_record(alice))
        await writer.flush()
    assert len(await _rows(sessionmaker)) == 6
    assert writer.dropped_total == 3
    assert any("accepting rows again after dropping 3" in r.getMessage() for r in caplog.records)


async def test_close_gives_up_after_its_timeout(writers, alice, make_record, migrated_url, caplog):
    writer = writers(flush_interval=0.01)
    await writer.start()
    await _rename(migrated_url, "usage_records", "usage_records_away")
    try:
        for _ in range(3):
            writer.submit(make_record(alice))
        with caplog.at_level(logging.ERROR, logger=WRITER_LOG):
            await asyncio.wait_for(writer.close(timeout=0.3), 5)
    finally:
        await _rename(migrated_url, "usage_records_away", "usage_records")
    assert (writer.dropped_total, writer.queued) == (3, 0)
    assert any("3 rows unwritten" in r.getMessage() for r in caplog.records)


async def test_submit_never_awaits(writers, alice, make_record):
    writer = writers()
    assert not asyncio.iscoroutinefunction(writer.submit)
    assert not asyncio.iscoroutinefunction(writer.submit_owner)
    assert writer.submit(make_record(alice)) is True


async def test_counting_rows(writers, alice, make_record, sessionmaker):
    writer = writers(batch_size=7, flush_interval=60)
    await writer.start()
    for _ in range(20):
        writer.submit(make_record(alice))
    await writer.flush()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(UsageRow)) == 20


class _NotingRow(tuple[Any, ...]):
    """A row that notes the threads it is read in (converted into a driver tuple)."""

    threads: ClassVar[set[str]] = set()

    def __getitem__(self, key: Any) -> Any:
        _NotingRow.threads.add(threading.current_thread().name)
        return super().__getitem__(key)


async def test_the_next_batch_is_converted_while_one_is_written(
    postgres_url, alice_pg, make_record
):
    # PostgreSQL alone (SQLite converts each batch in its connection's thread, after the
    # one before). Another connection holds a lock on the table: the first batch waits
    # for it in the server, and meanwhile the next one is taken and converted.
    engine = make_engine(postgres_url)
    sessionmaker = make_sessionmaker(engine)
    writer = UsageWriter(sessionmaker, batch_size=1, flush_interval=0.01)
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("LOCK TABLE usage_records IN EXCLUSIVE MODE")
            await writer.start()
            first, second = make_record(alice_pg), make_record(alice_pg)
            writer.replay([Entry(USAGE, USAGE_COLUMNS, usage_row(first), 0)])
            await asyncio.sleep(0.3)  # the first batch is being written, blocked
            _NotingRow.threads.clear()
            writer.replay([Entry(USAGE, USAGE_COLUMNS, _NotingRow(usage_row(second)), 0)])

            async def converted() -> bool:
                return bool(_NotingRow.threads)

            await _eventually(converted, timeout=3)  # before the lock is let go
            assert _NotingRow.threads == {"gemini-meter-writer_0"}
            stored = await connection.exec_driver_sql("SELECT count(*) FROM usage_records")
            assert stored.scalar() == 0
            assert writer.queued == 2
            await connection.rollback()
        await asyncio.wait_for(writer.flush(), 10)
        assert sorted(r for r, _ in await _rows(sessionmaker)) == sorted(
            [first.request_id, second.request_id]
        )
        assert writer.failed_rows_total == 0
    finally:
        await writer.close()
        await engine.dispose()


async def test_a_character_no_database_stores_does_not_lose_the_record(
    writers, alice, make_record, sessionmaker
):
    # PostgreSQL's text and jsonb refuse NUL, and neither database takes a lone surrogate
    # (a JSON escape or an undecodable path makes one): the row was refused whole, and
    # dropped, or, on SQLite, retried for ever.
    writer = writers()
    await writer.start()
    record = make_record(
        alice,
        model="gemini\x00-2.5-\udc80flash",
        interaction_id="v1_\x00a",
        previous_interaction_id="v1_\x00b",
        requested_service_tier="fl\x00ex",
        labels={"te\x00am": "re\x00search", "app": "\ud800ok"},
        usage=Usage(
            input_tokens=10,
            output_tokens=5,
            total_tokens=15,
            # two names that become one add up: none of the 10 tokens is lost
            input_by_modality={"te\x00xt": 6, "te\ufffdxt": 4},
            grounding={"google\x00search": 2},
        ),
    )
    writer.submit(record)
    writer.submit_owner("v1_\x00c", alice, "gemini\x00")
    await asyncio.wait_for(writer.flush(), 10)
    assert writer.failed_rows_total == 0
    async with sessionmaker() as session:
        [row] = (await session.scalars(select(UsageRow))).all()
        owned = await interaction_owner(session, "v1_\ufffdc")
    assert row.model == "gemini\ufffd-2.5-\ufffdflash"
    assert row.interaction_id == "v1_\ufffda"
    assert row.previous_interaction_id == "v1_\ufffdb"
    assert row.requested_service_tier == "fl\ufffdex"
    assert row.labels == {"te\ufffdam": "re\ufffdsearch", "app": "\ufffdok"}
    assert row.modalities == {"input": {"te\ufffdxt": 10}}
    assert row.grounding == {"google\ufffdsearch": 2}
    assert (row.input_tokens, row.output_tokens) == (10, 5)
    assert owned is not None and owned.user_id == alice.user_id


async def test_a_row_the_driver_cannot_bind_is_given_up_alone_not_retried_for_ever(
    writers, alice, make_record, sessionmaker
):
    # A token count past 64 bits (only a broken upstream could report one) fits neither
    # database: on SQLite, sqlite3's OverflowError kept the whole batch retrying for ever,
    # and every record after it waiting.
    writer = writers(attempts_before_split=1)
    await writer.start()
    huge = make_record(alice, usage=Usage(input_tokens=2**70, total_tokens=2**70))
    fine = make_record(alice)
    writer.submit(huge)
    writer.submit(fine)
    await asyncio.wait_for(writer.flush(), 10)
    assert writer.failed_rows_total == 1
    assert await _rows(sessionmaker) == [(fine.request_id, None)]
