"""``gemini-meter serve`` as processes: ``--workers N`` runs N on one port, each with its own writer
and journal slot, under a supervisor that restarts one that dies; the access log can be off.

The proxy runs as real processes on the embedded SQLite default; the emulator runs in the
test, so its ledger of what it served is at hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from proxy.emulator import create_emulator_app, emulator_state_key
from proxy.errors import ConfigError
from proxy.server.run import loop_factory, worker_settings
from proxy.settings import EventLoop, Settings
from tests.faults.helpers import (
    GENERATE,
    ProxyProcess,
    cli,
    eventually,
    free_port,
    proxy_env,
    served,
)
from tests.faults.test_process_faults import _assert_each_once, _call, _stored_response_ids


def _workers(proxy: ProxyProcess) -> list[int]:
    """The pids of the supervisor's worker processes."""
    assert proxy.process is not None
    pid = proxy.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited since the list was read
        if b"spawn_main" in cmdline:  # not the resource tracker; a zombie's is empty
            workers.append(int(child))
    return workers


async def _requests_seen(session: aiohttp.ClientSession, metrics_port: int) -> float:
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gemini_meter_requests_total{")
    )


async def _start(tmp_path: Path, aiohttp_server: Any, workers: int, **settings: Any):
    emulator = await aiohttp_server(create_emulator_app())
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'meter.db'}"
    env = proxy_env(tmp_path, database_url, str(emulator.make_url("")).rstrip("/"), **settings)
    key = cli(env, "keys", "create", "--user", "alice").strip().splitlines()[-1]
    metrics_port = _free_ports(workers)
    args = ("--workers", str(workers), "--metrics-port", str(metrics_port)) if workers > 1 else ()
    proxy = ProxyProcess(env, free_port(), tmp_path / "proxy.log", args)
    await proxy.start()
    try:
        if workers > 1:
            await _all_ready(metrics_port, workers)
    except BaseException:
        proxy.kill()  # never a supervisor left running past its test
        raise
    return emulator.app[emulator_state_key], proxy, database_url, key, metrics_port


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free now (worker i's metrics: first + i)."""
    while True:
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first


async def _all_ready(metrics_port: int, workers: int) -> None:
    """Every worker listening (its metrics port is up once its proxy site is)."""

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(workers):
                    await _requests_seen(session, metrics_port + i)
        except aiohttp.ClientError:
            return False
        return True

    await eventually(ready, what="every worker listening")


async def _burst(proxy: ProxyProcess, key: str, calls: int) -> list[str]:
    # A connection per call, so the kernel spreads them over the workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        answers = await asyncio.gather(
            *(_call(session, proxy.url + GENERATE, key) for _ in range(calls))
        )
    return [a for a in answers if a is not None]


async def test_workers_share_the_port_and_every_call_is_recorded_once(
    tmp_path: Path, aiohttp_server: Any
):
    upstream, proxy, database_url, key, metrics_port = await _start(
        tmp_path, aiohttp_server, workers=2
    )
    try:
        assert len(_workers(proxy)) == 2
        received = await _burst(proxy, key, 60)
        assert len(received) == 60 == served(upstream)
        async with aiohttp.ClientSession() as session:
            seen = [await _requests_seen(session, metrics_port + i) for i in range(2)]
        # both took calls (all 60 connections on one of two workers: odds 2^-59), and
        # each worker's metrics count its own
        assert all(n > 0 for n in seen) and sum(seen) == 60, seen
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        _assert_each_once(await _stored_response_ids(database_url), received)
    finally:
        proxy.kill()


async def test_a_killed_worker_is_restarted_and_its_journal_replayed(
    tmp_path: Path, aiohttp_server: Any
):
    # Writers that would hold records for a minute: only the journals can save them.
    upstream, proxy, database_url, key, metrics_port = await _start(
        tmp_path,
        aiohttp_server,
        workers=2,
        writer_flush_interval_seconds=60,
        writer_batch_size=100_000,
    )
    try:
        received = await _burst(proxy, key, 40)
        before = _workers(proxy)
        for pid in before:  # both die at once, their records still in their journals
            os.kill(pid, signal.SIGKILL)

        async def replaced() -> bool:
            now = _workers(proxy)
            return len(now) == 2 and not set(now) & set(before)

        await eventually(replaced, what="the supervisor restarting both workers")
        await _all_ready(metrics_port, 2)
        assert proxy.process is not None and proxy.process.poll() is None

        async def stored_all() -> bool:
            return len(await _stored_response_ids(database_url)) >= len(received)

        # the restarted workers replay their slots (only when they stop, with a
        # 60 s flush interval: SIGTERM makes them flush)
        again = await _burst(proxy, key, 10)
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        await eventually(stored_all, what="the replayed records")
        _assert_each_once(await _stored_response_ids(database_url), received + again)
        assert served(upstream) == 50
    finally:
        proxy.kill()


async def test_the_access_log_can_be_turned_off(tmp_path: Path, aiohttp_server: Any):
    _, proxy, _, key, _ = await _start(tmp_path, aiohttp_server, workers=1, access_log="false")
    try:
        assert await _burst(proxy, key, 3)
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        log = proxy.log.read_text()
        assert "stopped: every finished call is recorded" in log
        assert GENERATE.split("?")[0] not in log and '" 200 ' not in log
    finally:
        proxy.kill()


@pytest.mark.parametrize(
    ("setting", "loop"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
async def test_serve_runs_on_the_event_loop_it_is_set_to_and_meters_alike(
    tmp_path: Path, aiohttp_server: Any, setting: str | None, loop: str
):
    # The default (auto) is uvloop, installed with the proxy; asyncio's own loop on request.
    settings = {"event_loop": setting} if setting else {}
    upstream, proxy, database_url, key, _ = await _start(
        tmp_path, aiohttp_server, workers=1, **settings
    )
    try:
        streamed = GENERATE.replace(":generateContent", ":streamGenerateContent") + "?alt=sse"
        async with aiohttp.ClientSession() as session:
            answers = [await _call(session, proxy.url + p, key) for p in (GENERATE, streamed)]
        received = [a for a in answers if a is not None]
        assert len(received) == 2 and served(upstream) == 1
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait() == 0
        assert f"(virtual_keys, sqlite, {loop})" in proxy.log.read_text()
        _assert_each_once(await _stored_response_ids(database_url), received)
    finally:
        proxy.kill()


def test_a_loop_that_cannot_be_had_is_a_set_up_error(monkeypatch: Any):
    assert loop_factory(EventLoop.ASYNCIO) is None
    assert loop_factory(EventLoop.AUTO) is uvloop.new_event_loop
    assert loop_factory(EventLoop.UVLOOP) is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert loop_factory(EventLoop.AUTO) is None
    with pytest.raises(ConfigError, match="event_loop is uvloop, but uvloop is not installed"):
        loop_factory(EventLoop.UVLOOP)


def test_each_worker_gets_its_own_metrics_port_from_a_set_up_the_supervisor_accepted(
    tmp_path: Path, monkeypatch: Any
):
    # The proxy on 8081, the workers' metrics on 8079 and 8080: valid. Worker 1's own
    # metrics port (8080) sits right below the proxy's, which a check of the workers'
    # range made again from there would have refused.
    monkeypatch.setenv("GEMINI_METER_KEY_SECRET_FILE", str(tmp_path / "secret"))
    settings = Settings(port=8081, metrics_port=8079, workers=2)
    mine = [worker_settings(settings, index) for index in range(settings.workers)]
    assert [(w.port, w.metrics_port, w.workers) for w in mine] == [(8081, 8079, 1), (8081, 8080, 1)]
    assert settings.metrics_port == 8079 and settings.workers == 2  # the supervisor's, unchanged
