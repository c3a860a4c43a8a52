"""Tools of the fault tests: a TCP relay that can lose a COMMIT's reply, an upstream
that resets a stream part way, the proxy as a real process, and polling waits.

Every fault test ends by comparing the database with the upstream's ledger: the
requests the emulator (running in the test's process) saw, and the response ids
the clients received. Waits are polling loops with generous deadlines, never
timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

# The tests' services start on ports picked the harness's way: below the ephemeral range.
from benchmarks.compare import free_port as free_port
from proxy.emulator import EmulatorState

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
PROMPT = {"contents": [{"role": "user", "parts": [{"text": "Count the records, please."}]}]}


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after a deadline far beyond the normal case."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout} s"
        await asyncio.sleep(0.05)


def served(upstream: EmulatorState, path: str = GENERATE) -> int:
    """How many requests for ``path`` reached the upstream."""
    return sum(1 for seen in upstream.requests if seen.path == path)


# ---------------------------------------------------------------- a TCP relay


class CommitReplyDropper:
    """A TCP relay to PostgreSQL that loses the reply to some COMMITs.

    The COMMIT itself is forwarded (the server commits); the relay then drops the
    connection instead of relaying the answer, so the client cannot know whether
    its transaction was committed. ``drop`` says how many of the next COMMIT
    replies to lose.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self.drop = 0
        self.dropped = 0
        self.commits = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        self._writers |= {client_w, server_w}
        lose_next_reply = asyncio.Event()

        async def upstream() -> None:
            while chunk := await client_r.read(65536):
                if b"COMMIT" in chunk:
                    self.commits += 1
                    if self.drop > 0:
                        self.drop -= 1
                        lose_next_reply.set()
                server_w.write(chunk)
                await server_w.drain()

        async def downstream() -> None:
            while chunk := await server_r.read(65536):
                if lose_next_reply.is_set():
                    # the server has answered the COMMIT: the client never hears it
                    self.dropped += 1
                    return
                client_w.write(chunk)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()
            self._writers.discard(writer)


# ---------------------------------------------------------------- an upstream that resets


def cutting_upstream(target: str, cut_after_events: int) -> web.Application:
    """An HTTP relay to ``target`` (the emulator) that resets every streamed reply
    after its first ``cut_after_events`` SSE events; anything else passes whole."""

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, target + request.raw_path, headers=headers, data=body
            ) as answer,
        ):
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                payload = await answer.read()
                kept = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                }
                return web.Response(status=answer.status, body=payload, headers=kept)
            response = web.StreamResponse(
                status=answer.status, headers={"Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            buffer = b""
            events = 0
            async for chunk in answer.content.iter_any():
                buffer += chunk
                while events < cut_after_events:
                    end = _event_end(buffer)
                    if end is None:
                        break
                    await response.write(buffer[:end])
                    buffer = buffer[end:]
                    events += 1
                if events >= cut_after_events:
                    break
            # A reset mid-stream, as a broken upstream connection shows it.
            assert request.transport is not None
            request.transport.abort()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def _event_end(buffer: bytes) -> int | None:
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else None


# ---------------------------------------------------------------- the proxy as a process


class ProxyProcess:
    """``gemini-meter serve`` in a subprocess, with its log kept in a file."""

    def __init__(
        self, env: dict[str, str], port: int, log: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.env, self.port, self.log, self.args = env, port, log, args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy.cli.main",
                    "serve",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        async def ready() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.log.read_text()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(self.url + "/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, what="the proxy answering /healthz")

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        process = self.process

        async def ended() -> bool:
            return process.poll() is not None

        await eventually(ended, timeout, "the proxy process exiting")
        return int(process.returncode)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def proxy_env(tmp_path: Path, database_url: str, upstream: str, **settings: Any) -> dict[str, str]:
    env = {
        **os.environ,
        "GEMINI_METER_DATABASE_URL": database_url,
        "GEMINI_METER_KEY_SECRET": "fault-test-secret",
        "GEMINI_METER_UPSTREAM": upstream,
        "GEMINI_METER_UPSTREAM_API_KEY": "upstream-secret-key",
        "GEMINI_METER_JOURNAL_DIR": str(tmp_path / "journal"),
        "GEMINI_METER_LOG_LEVEL": "INFO",
    }
    env.pop("GEMINI_METER_CONFIG", None)
    for name, value in settings.items():
        env[f"GEMINI_METER_{name.upper()}"] = str(value)
    return env
