"""Faults of the proxy process itself: SIGKILL right after a burst, then a restart;
SIGTERM with slow upstream calls in flight. ``gemini-meter serve`` runs as a real
process; the emulator runs in the test, so its ledger of what it served is at hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from proxy.emulator import EmulatorState, create_emulator_app, emulator_state_key
from proxy.storage.schema import UsageRow, make_engine
from tests.faults.helpers import (
    GENERATE,
    PROMPT,
    ProxyProcess,
    cli,
    eventually,
    free_port,
    proxy_env,
    served,
)

STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


async def _stored(database_url: str, *columns: Any) -> list[tuple[Any, ...]]:
    """``columns`` of every stored usage record, read straight from the database."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(select(*columns))]
    finally:
        await engine.dispose()


async def _stored_response_ids(database_url: str) -> list[str]:
    return [str(r) for (r,) in await _stored(database_url, UsageRow.response_id)]


async def _setup(
    tmp_path: Path, aiohttp_server: Any, **settings: Any
) -> tuple[EmulatorState, ProxyProcess, str, str]:
    emulator = await aiohttp_server(create_emulator_app())
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'meter.db'}"
    env = proxy_env(tmp_path, database_url, str(emulator.make_url("")).rstrip("/"), **settings)
    key = cli(env, "keys", "create", "--user", "alice").strip().splitlines()[-1]
    proxy = ProxyProcess(env, free_port(), tmp_path / "proxy.log")
    return emulator.app[emulator_state_key], proxy, database_url, key


async def _call(session: aiohttp.ClientSession, url: str, key: str, **headers: str) -> str | None:
    """One call; the response id the client received (None if it got no answer)."""
    try:
        async with session.post(
            url, json=PROMPT, headers={"x-goog-api-key": key, **headers}
        ) as response:
            body = await response.read()
            if response.status != 200:
                return None
    except aiohttp.ClientError:
        return None
    if url.endswith("alt=sse"):
        events = [json.loads(line[5:]) for line in body.split(b"\r\n") if line.startswith(b"data:")]
        return str(events[-1]["responseId"])
    return str(json.loads(body)["responseId"])


def _assert_each_once(stored: list[str], received: list[str]) -> None:
    assert len(stored) == len(set(stored)), "a record was doubled"
    assert sorted(stored) == sorted(received)


async def test_sigkill_after_a_burst_then_a_restart_loses_and_doubles_nothing(
    tmp_path: Path, aiohttp_server: Any
):
    # A writer that would hold records for a minute: only the journal can save them.
    upstream, proxy, database_url, key = await _setup(
        tmp_path,
        aiohttp_server,
        writer_flush_interval_seconds=60,
        writer_batch_size=100_000,
    )
    await proxy.start()
    try:
        received: list[str] = []
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # bounded load: three bursts of 20 concurrent calls
                answers = await asyncio.gather(
                    *(_call(session, proxy.url + GENERATE, key) for _ in range(20))
                )
                received += [a for a in answers if a is not None]
        proxy.signal(signal.SIGKILL)
        await proxy.wait()
        assert len(received) == 60
        assert served(upstream) == 60

        await proxy.start()  # the same settings: it replays its journal

        async def stored_all() -> bool:
            return len(await _stored_response_ids(database_url)) >= len(received)

        await eventually(stored_all, what="the replayed records")
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        _assert_each_once(await _stored_response_ids(database_url), received)
        assert served(upstream) == 60
    finally:
        proxy.kill()


async def test_sigterm_lets_slow_calls_and_streams_finish_and_records_them(
    tmp_path: Path, aiohttp_server: Any
):
    upstream, proxy, database_url, key = await _setup(
        tmp_path, aiohttp_server, shutdown_grace_seconds=60
    )
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            calls = [
                *(
                    _call(session, proxy.url + GENERATE, key, **{"x-emulator-delay-ms": "1500"})
                    for _ in range(4)
                ),
                *(
                    _call(session, proxy.url + STREAM, key, **{"x-emulator-chunk-delay-ms": "500"})
                    for _ in range(3)
                ),
            ]
            pending = asyncio.gather(*calls)

            async def all_in_flight() -> bool:
                return served(upstream) + served(upstream, STREAM.partition("?")[0]) == 7

            await eventually(all_in_flight, what="every call reaching the upstream")
            proxy.signal(signal.SIGTERM)
            answers = await pending
        assert await proxy.wait() == 0
        assert None not in answers  # every client got its whole answer
        _assert_each_once(await _stored_response_ids(database_url), [str(a) for a in answers])
        log = proxy.log.read_text()
        assert "draining 7 calls in flight" in log
    finally:
        proxy.kill()


async def test_a_stream_still_running_after_the_grace_period_is_cut_and_recorded(
    tmp_path: Path, aiohttp_server: Any
):
    upstream, proxy, database_url, key = await _setup(
        tmp_path, aiohttp_server, shutdown_grace_seconds=0.5
    )
    await proxy.start()
    try:
        body = {"model": "gemini-3.5-flash", "input": "A slow story.", "stream": True}
        async with aiohttp.ClientSession() as session:
            call = asyncio.ensure_future(
                session.post(
                    proxy.url + "/v1beta/interactions",
                    json=body,
                    # far longer than the grace period between two events
                    headers={"x-goog-api-key": key, "x-emulator-chunk-delay-ms": "5000"},
                )
            )

            async def reached_upstream() -> bool:
                return len(upstream.interactions) == 1

            await eventually(reached_upstream, what="the stream reaching the upstream")
            proxy.signal(signal.SIGTERM)
            assert await proxy.wait() == 0
            with contextlib.suppress(aiohttp.ClientError):
                response = await call
                with contextlib.suppress(aiohttp.ClientError):
                    await response.read()
                response.release()
        [iid] = list(upstream.interactions)
        engine = make_engine(database_url)
        try:
            async with engine.connect() as connection:
                rows = (
                    await connection.execute(select(UsageRow.interaction_id, UsageRow.provisional))
                ).all()
        finally:
            await engine.dispose()
        # cut, and recorded as provisional: the terminal usage seen later replaces it
        assert [tuple(r) for r in rows] == [(iid, True)]
        assert "cut 1 streams still running after the grace period" in proxy.log.read_text()
    finally:
        proxy.kill()


async def test_a_client_that_leaves_before_the_stream_starts_is_still_billed(
    tmp_path: Path, aiohttp_server: Any
):
    # The real server: it does not cancel a handler whose client left, so the reply
    # is prepared for a connection already gone.
    upstream, proxy, database_url, key = await _setup(tmp_path, aiohttp_server)
    await proxy.start()
    try:
        body = json.dumps(PROMPT).encode()
        head = (
            f"POST {STREAM} HTTP/1.1\r\nHost: x\r\nx-goog-api-key: {key}\r\n"
            "x-emulator-delay-ms: 300\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(head + body)
        await writer.drain()

        async def reached_upstream() -> bool:
            return served(upstream, STREAM.partition("?")[0]) == 1

        await eventually(reached_upstream, what="the call reaching the upstream")
        writer.close()  # gone before the upstream answers (it waits 300 ms)
        await writer.wait_closed()

        async def recorded() -> bool:
            return len(await _stored_response_ids(database_url)) == 1

        await eventually(recorded, what="the record of the abandoned stream")
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        assert len(await _stored_response_ids(database_url)) == 1
        # flagged, as the client left
        assert await _stored(database_url, UsageRow.client_disconnected) == [(True,)]
        assert "Traceback" not in proxy.log.read_text()
    finally:
        proxy.kill()


@pytest.mark.parametrize("policy", ["refuse"])
async def test_a_full_journal_refuses_billable_calls_before_they_reach_the_upstream(
    tmp_path: Path, aiohttp_server: Any, policy: str
):
    # Room for a few records, and a writer that keeps them: the journal fills up.
    upstream, proxy, database_url, key = await _setup(
        tmp_path,
        aiohttp_server,
        writer_flush_interval_seconds=60,
        writer_batch_size=100_000,
        journal_max_bytes=4000,
        journal_full_policy=policy,
    )
    await proxy.start()
    try:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.post(
                    proxy.url + GENERATE, json=PROMPT, headers={"x-goog-api-key": key}
                ) as response:
                    body = await response.read()
                    statuses.append(response.status)
                    if response.status == 503:
                        assert json.loads(body)["error"]["status"] == "UNAVAILABLE"
        admitted = statuses.count(200)
        assert 0 < admitted < 20 and statuses.count(503) == 20 - admitted
        assert served(upstream) == admitted  # the refused ones never reached it
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        # every admitted call is recorded: none was dropped
        assert len(await _stored_response_ids(database_url)) == admitted
    finally:
        proxy.kill()
