"""Direct calls, Gemini Meter and LiteLLM's proxy, side by side in one run, driven by wrk.

One upstream stub (``benchmarks/stub.py``) serves all three targets; each proxy has its own
upstream key, so the stub's ledger tells their calls apart. For plain and streamed calls
at each concurrency, wrk (Debian's ``wrk``; ``apt-get install wrk``) drives every target
in turn, repetition after repetition with the order rotated, and the medians are
reported: requests per second, p50 and p99 latency, the latency each proxy adds to a
direct call of the same repetition, and CPU per call read from ``/proc/<pid>/stat``
(utime + stime of the process and its children, over the run, divided by the calls
served). Then, per process: start time (launch to ready), resident memory after the load,
and for Gemini Meter the records in its database after a graceful stop against the calls
the stub received with its key.

A fourth target, ``benchmarks/bare.py``, is an aiohttp forwarder that meters nothing:
aiohttp's server and client (the meter's, before its own client and lean lane), doing only
the relaying. The meter's CPU
per call against it is what the metering costs; its own against the stub's is the floor
aiohttp puts under any forwarder built on it.

A fifth and a sixth, ``benchmarks/lean.py`` without and with ``--uvloop``, relay the same
way on bare asyncio protocols and httptools: how far below aiohttp's floor a forwarder's
CPU per call can go, on asyncio's event loop and on uvloop's. Like the bare forwarder,
they meter nothing and keep no records.

Two memory scenarios run on a second, fresh Gemini Meter: 1,000 streams held open at
once, and one 100 MiB stream; its resident memory is sampled every 20 ms. Start to ready
is measured on the embedded default (SQLite in the working directory, journal on) over
several launches, the package's bytecode written first as an installed wheel has it.

    python benchmarks/compare.py                       # prints the markdown report
    python benchmarks/compare.py --write docs/benchmarks.md
    python benchmarks/compare.py --smoke               # seconds: completes, loses nothing
    python benchmarks/compare.py --startup-only --starts 15   # start to ready alone
    python benchmarks/compare.py --startup-only --starts 15 --startup-against /tmp/old
    python benchmarks/compare.py --paced 0 2 20     # calls one at a time, paused between

LiteLLM (``litellm[proxy]``, pinned below) is installed on first use into
``benchmarks/.litellm-venv``, never into the project's environment, and reached through
its Gemini pass-through route (``/gemini/...``) without a database (its spend tracking
needs Prisma's engine, which cannot be downloaded here). ``--smoke`` skips it, runs each
wrk leg for a second, shrinks the memory scenarios, and checks only that everything
completes and that no call is lost; the test suite runs it.

wrk times a response to its last byte. The issue's latency target for streams is the
first byte, so each repetition also times streamed calls at c=1 to their first byte with
an aiohttp client, on a reply whose events come 10 ms apart (a proxy that buffered the
stream would show it there).

A process's CPU is read from ``/proc`` for it and its descendants, so ``--serve-args
'--workers N'`` measures every worker. Failing runs leave their working directory (logs,
databases) in place and say where.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
LUA: Final = BENCH / "wrk" / "post.lua"
STUB: Final = BENCH / "stub.py"
BARE: Final = BENCH / "bare.py"
BARE_NAME: Final = "bare forwarder"
BARE_KEY: Final = "bare-upstream-key"
LEAN: Final = BENCH / "lean.py"
LEAN_NAME: Final = "lean forwarder"
LEAN_KEY: Final = "lean-upstream-key"
LEAN_UVLOOP_NAME: Final = "lean forwarder + uvloop"
LEAN_UVLOOP_KEY: Final = "lean-uvloop-upstream-key"
# The targets that only relay: no records kept, and no peers to put against the meter.
FORWARDERS: Final = (BARE_NAME, LEAN_NAME, LEAN_UVLOOP_NAME)

# One version, so figures from different days compare the same peer.
LITELLM_VERSION: Final = "1.108.7"
LITELLM_VENV: Final = BENCH / ".litellm-venv"
LITELLM_MASTER_KEY: Final = "sk-bench-master"

MODEL: Final = "gemini-2.5-flash"
BODY: Final = json.dumps(
    {"contents": [{"role": "user", "parts": [{"text": "Benchmark prompt " * 8}]}]},
    separators=(",", ":"),
)
# A streamed Interactions API call: the stub's interactions route, one new id each.
INTERACTION_BODY: Final = json.dumps(
    {"model": MODEL, "input": "Benchmark prompt " * 8, "stream": True}, separators=(",", ":")
)
DIRECT_KEY: Final = "direct-upstream-key"
SECTION: Final = "benchmarks/compare.py"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A port to start a service on, free now. Taken below the kernel's ephemeral range
    where there is room: a service under callgrind takes seconds to bind it, and in the
    meantime a port from that range may be handed to any outgoing connection or any
    other ``bind(0)`` on the machine (the test suite runs on every core at once)."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(_STATIC_LOW, low) if low > _STATIC_LOW + 1000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port below the ephemeral range")


# free_port picks from here up to the kernel's ephemeral range (any in use is skipped).
_STATIC_LOW: Final = 20000


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --workers N`` and uvicorn may fork)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _cpu_ticks(stat: Path) -> int:
    """utime + stime from a ``/proc`` stat file (0 once the process is gone)."""
    with contextlib.suppress(OSError):
        # Fields after the command name (which may hold spaces): utime is the 12th, stime
        # the 13th (fields 14 and 15 of proc(5)).
        fields = stat.read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``'s tree, every thread included, in seconds."""
    return sum(_cpu_ticks(Path(f"/proc/{member}/stat")) for member in process_tree(pid)) / CLK_TCK


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``'s main thread alone: a meter's event loop, in seconds."""
    return _cpu_ticks(Path(f"/proc/{pid}/task/{pid}/stat")) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid``'s tree, in MiB."""
    total_kib = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def http_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@dataclass
class Service:
    """A process the harness started, and how long it took to answer its readiness check."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    start_seconds: float
    # CPU spent until ready: unlike the wall time, barely moved by other load on the machine.
    start_cpu_seconds: float
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a graceful stop: Gemini Meter drains and flushes its writer), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"{self.name} did not stop within {timeout:.0f} s") from None


def launch(
    name: str,
    command: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    port: int,
    ready_path: str,
    timeout: float = 120,
) -> Service:
    """Start ``command`` and time it from launch to the first 200 on ``ready_path``."""
    log = cwd / f"{name}.log"
    with log.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=out)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if http_status(port, ready_path) == 200:
            elapsed = time.perf_counter() - started
            return Service(name, process, port, elapsed, cpu_seconds(process.pid), log)
        if process.poll() is not None:
            break
        time.sleep(0.005)
    process.kill()
    process.wait()
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} never became ready on {ready_path}:\n{tail}")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any GEMINI_METER_* setting, so each proxy runs its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_METER_")}
    env.update(extra)
    return env


def start_stub(work: Path, big_bytes: int, held_chunks: int, held_delay_ms: float) -> Service:
    port = free_port()
    command = [
        sys.executable,
        str(STUB),
        f"--port={port}",
        f"--big-bytes={big_bytes}",
        f"--held-chunks={held_chunks}",
        f"--held-delay-ms={held_delay_ms}",
    ]
    return launch("stub", command, env=clean_env(), cwd=work, port=port, ready_path="/_stub/stats")


def start_bare(work: Path, stub: Service) -> Service:
    """``bare.py``: an aiohttp forwarder that meters nothing, the floor under the meter."""
    port = free_port()
    command = [
        sys.executable,
        str(BARE),
        f"--port={port}",
        f"--upstream=http://127.0.0.1:{stub.port}",
    ]
    return launch("bare", command, env=clean_env(), cwd=work, port=port, ready_path="/_bare/ready")


def start_lean(work: Path, stub: Service, *, uvloop: bool) -> Service:
    """``lean.py``: a forwarder on asyncio protocols and httptools, on uvloop if asked."""
    port = free_port()
    command = [
        sys.executable,
        str(LEAN),
        f"--port={port}",
        f"--upstream=http://127.0.0.1:{stub.port}",
        *(["--uvloop"] if uvloop else []),
    ]
    name = "lean-uvloop" if uvloop else "lean"
    return launch(name, command, env=clean_env(), cwd=work, port=port, ready_path="/_lean/ready")


def stub_stats(stub: Service) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    try:
        connection.request("GET", "/_stub/stats")
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


@dataclass
class Meter:
    """A Gemini Meter on the embedded default: SQLite and its journal in its own directory."""

    name: str
    work: Path
    env: dict[str, str]
    key: str
    upstream_key: str
    serve_args: list[str]

    @classmethod
    def prepare(
        cls, name: str, root: Path, stub: Service, serve_args: list[str], **settings: str
    ) -> Meter:
        work = root / name
        work.mkdir()
        upstream_key = f"{name}-upstream-key"
        env = clean_env(
            GEMINI_METER_UPSTREAM=f"http://127.0.0.1:{stub.port}",
            GEMINI_METER_UPSTREAM_API_KEY=upstream_key,
            # No access log: one line per call would be measured as the meter's cost.
            GEMINI_METER_LOG_LEVEL="WARNING",
            **settings,
        )
        created = subprocess.run(
            [sys.executable, "-m", "proxy.cli.main", "keys", "create", "--user", "bench"],
            env=env,
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        return cls(name, work, env, key, upstream_key, serve_args)

    def launch(self) -> Service:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "proxy.cli.main",
            "serve",
            f"--port={port}",
            *self.serve_args,
        ]
        return launch(
            self.name, command, env=self.env, cwd=self.work, port=port, ready_path="/readyz"
        )

    def records(self) -> int:
        """Rows in ``usage_records``, read straight from the SQLite file, not through the meter."""
        with contextlib.closing(sqlite3.connect(self.work / "gemini-meter.db")) as db:
            return int(db.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0])


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own virtual environment, installed on first use."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / f"litellm-{LITELLM_VERSION}.installed"
    if not marker.exists():
        print(
            f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (once)",
            file=sys.stderr,
        )
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        try:
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
            subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(
                f"could not install litellm[proxy]=={LITELLM_VERSION} ({exc});"
                " --no-litellm leaves it out"
            ) from exc
        marker.touch()
    return litellm


def start_litellm(work: Path, stub: Service) -> tuple[Service, str]:
    """LiteLLM's proxy, one worker, no database; returns it and its upstream key."""
    litellm = ensure_litellm()
    home = work / "litellm"
    home.mkdir()
    config = home / "config.yaml"
    config.write_text(f"general_settings:\n  master_key: {LITELLM_MASTER_KEY}\n")
    # uvicorn's access log off, as Gemini Meter's is: neither pays for a line per call.
    log_config = home / "logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "loggers": {"uvicorn.access": {"level": "WARNING"}},
            }
        )
    )
    upstream_key = "litellm-upstream-key"
    env = clean_env(
        GEMINI_API_BASE=f"http://127.0.0.1:{stub.port}",
        GEMINI_API_KEY=upstream_key,
        # Its price map from the package, not the network.
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    port = free_port()
    command = [
        str(litellm),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        f"--port={port}",
        "--log_config",
        str(log_config),
    ]
    service = launch(
        "litellm", command, env=env, cwd=home, port=port, ready_path="/health/liveliness"
    )
    return service, upstream_key


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class Leg:
    """One target of the load: where wrk sends, with which key, whose CPU it reads."""

    name: str
    port: int
    prefix: str  # "" for Gemini's own paths, "/gemini" for LiteLLM's pass-through
    header_key: str | None
    query_key: str | None
    pid: int | None  # the proxy's process (None for direct calls)

    def url(self, stream: bool, shape: str = "") -> str:
        method = "streamGenerateContent" if stream else "generateContent"
        query = ["alt=sse"] if stream else []
        if shape:
            query.append(f"bench={shape}")
        if self.query_key:
            query.append(f"key={self.query_key}")
        suffix = "?" + "&".join(query) if query else ""
        return f"http://127.0.0.1:{self.port}{self.prefix}/v1beta/models/{MODEL}:{method}{suffix}"

    def interactions_url(self) -> str:
        suffix = f"?key={self.query_key}" if self.query_key else ""
        return f"http://127.0.0.1:{self.port}{self.prefix}/v1beta/interactions{suffix}"


@dataclass
class Run:
    """One wrk run of one leg."""

    leg: str
    stream: bool
    concurrency: int
    rep: int
    requests: int  # responses wrk read in full, whatever their status
    bad_status: int  # of those, the ones with a status of 400 or more
    errors: int  # bad statuses, plus socket errors and time-outs (no response at all)
    seconds: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_s: float
    stub_cpu_s: float
    # of proxy_cpu_s, its main thread's (a meter's event loop); the rest is other threads'
    proxy_loop_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.bad_status

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def cpu_ms_per_call(self, of: Literal["proxy", "loop", "stub"]) -> float:
        seconds = {
            "proxy": self.proxy_cpu_s,
            "loop": self.proxy_loop_cpu_s,
            "stub": self.stub_cpu_s,
        }[of]
        return 1000 * seconds / self.ok if self.ok else float("nan")


WRK_LINE: Final = re.compile(r"^WRK_JSON (\{.*\})$", re.MULTILINE)


def parse_wrk(output: str) -> dict[str, float]:
    """The summary ``benchmarks/wrk/post.lua`` prints from wrk's ``done()``."""
    match = WRK_LINE.search(output)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
    return {k: float(v) for k, v in json.loads(match.group(1)).items()}


def run_wrk(
    leg: Leg,
    stub: Service,
    *,
    stream: bool,
    concurrency: int,
    seconds: int,
    rep: int,
) -> Run:
    env = {**os.environ, "BENCH_BODY": BODY, "BENCH_API_KEY": leg.header_key or ""}
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout=10s",
        "-s",
        str(LUA),
        leg.url(stream),
    ]
    proxy_before = cpu_seconds(leg.pid) if leg.pid else 0.0
    loop_before = main_thread_cpu_seconds(leg.pid) if leg.pid else 0.0
    stub_before = cpu_seconds(stub.pid)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    stub_cpu = cpu_seconds(stub.pid) - stub_before
    proxy_cpu = cpu_seconds(leg.pid) - proxy_before if leg.pid else 0.0
    loop_cpu = main_thread_cpu_seconds(leg.pid) - loop_before if leg.pid else 0.0
    summary = parse_wrk(done.stdout)
    errors = sum(summary[k] for k in ("status", "connect", "read", "write", "timeout"))
    return Run(
        leg=leg.name,
        stream=stream,
        concurrency=concurrency,
        rep=rep,
        requests=int(summary["requests"]),
        bad_status=int(summary["status"]),
        errors=int(errors),
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        proxy_cpu_s=proxy_cpu,
        stub_cpu_s=stub_cpu,
        proxy_loop_cpu_s=loop_cpu,
    )


# --------------------------------------------------------------------------- memory scenarios


@contextlib.asynccontextmanager
async def peak_rss(pid: int, into: dict[str, float]) -> AsyncIterator[None]:
    """Samples ``pid``'s resident memory every 20 ms while the block runs."""
    into["idle"] = rss_mib(pid)
    into["peak"] = into["idle"]

    async def sample() -> None:
        while True:
            into["peak"] = max(into["peak"], rss_mib(pid))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        into["peak"] = max(into["peak"], rss_mib(pid))
        into["after"] = rss_mib(pid)


async def read_streams(url: str, key: str | None, count: int) -> tuple[int, int, list[str]]:
    """``count`` streams at once: how many ended with a 200, the bytes read, what failed."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["x-goog-api-key"] = key
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int, int]:
            async with session.post(url, data=BODY, headers=headers) as response:
                size = 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                return int(response.status == 200), size

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    ok = sum(r[0] for r in results if isinstance(r, tuple))
    size = sum(r[1] for r in results if isinstance(r, tuple))
    failures = sorted({repr(r) for r in results if isinstance(r, BaseException)})
    return ok, size, failures


async def first_bytes(
    leg: Leg,
    seconds: float,
    *,
    stream: bool = True,
    shape: str = "trickle",
    pause: float = 0.0,
    interaction: bool = False,
) -> list[float]:
    """Calls one after another for ``seconds``: each one's time to its first byte.

    wrk only times a response to its last byte; the issue's latency target for streams is
    the first. By default the calls are streamed, on the stub's ``trickle`` reply, which
    sends its first event at once and the other two 10 ms apart, so a proxy that buffered
    the stream would show it here. ``pause`` seconds pass between one call's end and the
    next one's start. With ``interaction``, the calls are streamed interactions instead
    (the stub's first event at once, the second 10 ms later): a meter stores each new
    interaction's owner before the client may see its id.
    """
    headers = {"Content-Type": "application/json"}
    if leg.header_key:
        headers["x-goog-api-key"] = leg.header_key
    url = leg.interactions_url() if interaction else leg.url(stream, shape)
    body = INTERACTION_BODY if interaction else BODY
    times: list[float] = []
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.content.readany()
                first = time.perf_counter() - started
                async for _ in response.content.iter_any():
                    pass
                if response.status != 200:
                    raise RuntimeError(f"{leg.name}: status {response.status} on {url}")
            times.append(first)
            if pause:
                await asyncio.sleep(pause)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile, as wrk reports it."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def memory_scenarios(
    meter: Service, meter_leg: Leg, direct: Leg, stub: Service, streams: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Held streams: all open at once; the stub's peak shows they really were concurrent.
    stub_stats(stub)  # resets the stub's peak
    rss: dict[str, float] = {}
    started = time.perf_counter()
    async with peak_rss(meter.pid, rss):
        ok, _, failures = await read_streams(
            meter_leg.url(True, "held"), meter_leg.header_key, streams
        )
    out["held"] = {
        "streams": streams,
        "completed": ok,
        "failures": failures[:5],
        "upstream_peak_open": stub_stats(stub)["peak_streams"],
        "seconds": time.perf_counter() - started,
        **{f"rss_{k}_mib": v for k, v in rss.items()},
    }
    # One big stream, direct then through the meter: the bytes and the rate of each.
    started = time.perf_counter()
    _, direct_bytes, _ = await read_streams(direct.url(True, "big"), direct.header_key, 1)
    direct_seconds = time.perf_counter() - started
    rss = {}
    started = time.perf_counter()
    async with peak_rss(meter.pid, rss):
        ok, meter_bytes, failures = await read_streams(
            meter_leg.url(True, "big"), meter_leg.header_key, 1
        )
    meter_seconds = time.perf_counter() - started
    out["big"] = {
        "completed": ok,
        "failures": failures,
        "direct_bytes": direct_bytes,
        "meter_bytes": meter_bytes,
        "direct_mib_per_s": direct_bytes / 2**20 / direct_seconds,
        "meter_mib_per_s": meter_bytes / 2**20 / meter_seconds,
        **{f"rss_{k}_mib": v for k, v in rss.items()},
    }
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Config:
    seconds: int
    reps: int
    concurrency: list[int]
    litellm: bool
    warmup: int
    streams: int
    big_bytes: int
    held_chunks: int
    held_delay_ms: float
    starts: int
    serve_args: list[str]
    smoke: bool
    probe_seconds: float = 10.0
    preliminary: bool = False


@dataclass
class Outcome:
    config: Config
    runs: list[Run] = field(default_factory=list)
    # Per target, per repetition: the times to first byte of streamed calls at c=1, in ms.
    first_bytes: dict[str, list[list[float]]] = field(default_factory=dict)
    # The same for streamed interactions (all but LiteLLM, whose pass-through route is run
    # here for generateContent only).
    interaction_first_bytes: dict[str, list[list[float]]] = field(default_factory=dict)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    starts: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) seconds
    skipped: list[str] = field(default_factory=list)
    # The 1-minute load average at the start and the end: how busy the machine was.
    load: list[float] = field(default_factory=list)

    def lost(self) -> dict[str, int]:
        """Calls the stub received with a meter's key minus the records that meter stored."""
        return {
            name: int(p["received"]) - int(p["records"])
            for name, p in self.processes.items()
            if "records" in p
        }


def scenarios(config: Config) -> Iterator[tuple[bool, int]]:
    for stream in (False, True):
        for concurrency in config.concurrency:
            yield stream, concurrency


async def run(config: Config) -> Outcome:
    outcome = Outcome(config)
    outcome.load.append(os.getloadavg()[0])
    with workspace("gemini-meter-compare-") as (work, services):
        compile_bytecode()
        stub = start_stub(work, config.big_bytes, config.held_chunks, config.held_delay_ms)
        services.append(stub)
        meter = Meter.prepare("meter", work, stub, config.serve_args)
        # Start to ready on the embedded default: launches of the same meter, stopped at once.
        outcome.starts += time_starts(meter, config.starts - 1)
        meter_service = meter.launch()
        services.append(meter_service)
        outcome.starts.append((meter_service.start_seconds, meter_service.start_cpu_seconds))
        bare = start_bare(work, stub)
        services.append(bare)
        lean = start_lean(work, stub, uvloop=False)
        services.append(lean)
        lean_uvloop = start_lean(work, stub, uvloop=True)
        services.append(lean_uvloop)
        # A forwarder passes its client's key on: that key is its upstream key in the ledger.
        forwarders = [
            (BARE_NAME, bare, BARE_KEY),
            (LEAN_NAME, lean, LEAN_KEY),
            (LEAN_UVLOOP_NAME, lean_uvloop, LEAN_UVLOOP_KEY),
        ]
        legs = [
            Leg("direct", stub.port, "", DIRECT_KEY, None, None),
            *(Leg(name, s.port, "", key, None, s.pid) for name, s, key in forwarders),
            Leg("Gemini Meter", meter_service.port, "", meter.key, None, meter_service.pid),
        ]
        litellm: Service | None = None
        litellm_upstream_key = ""
        if config.litellm:
            litellm, litellm_upstream_key = start_litellm(work, stub)
            services.append(litellm)
            legs.append(
                Leg("LiteLLM", litellm.port, "/gemini", None, LITELLM_MASTER_KEY, litellm.pid)
            )
        else:
            outcome.skipped.append("LiteLLM")

        # Responses read in full by the clients, per target, warm-up included.
        answered = dict.fromkeys((leg.name for leg in legs), 0)
        for leg in legs:
            for stream in (False, True):
                if config.warmup:
                    warm = run_wrk(
                        leg, stub, stream=stream, concurrency=10, seconds=config.warmup, rep=-1
                    )
                    answered[leg.name] += warm.requests
        for rep in range(config.reps):
            for result in repetition(config, legs, stub, rep):
                outcome.runs.append(result)
                answered[result.leg] += result.requests
            for leg in rotated(legs, rep):
                times = await first_bytes(leg, config.probe_seconds)
                outcome.first_bytes.setdefault(leg.name, []).append([1000 * t for t in times])
                answered[leg.name] += len(times)
            for leg in rotated(legs, rep):
                if leg.name == "LiteLLM":
                    continue
                times = await first_bytes(leg, config.probe_seconds, interaction=True)
                probed = outcome.interaction_first_bytes.setdefault(leg.name, [])
                probed.append([1000 * t for t in times])
                answered[leg.name] += len(times)
        outcome.processes["direct"] = facts(stub)
        for name, service, key in forwarders:
            outcome.processes[name] = facts(service)
            outcome.processes[name]["answered"] = answered[name]
            service.stop()
            outcome.processes[name]["received"] = received(stub, key)
        outcome.processes["Gemini Meter"] = facts(meter_service)
        outcome.processes["Gemini Meter"]["answered"] = answered["Gemini Meter"]
        if litellm is not None:
            outcome.processes["LiteLLM"] = facts(litellm)
            outcome.processes["LiteLLM"]["answered"] = answered["LiteLLM"]
            litellm.stop()
            outcome.processes["LiteLLM"]["received"] = received(stub, litellm_upstream_key)
        meter_service.stop()
        outcome.processes["Gemini Meter"]["records"] = meter.records()
        outcome.processes["Gemini Meter"]["received"] = received(stub, meter.upstream_key)

        # The memory scenarios, on a fresh meter whose upstream pool can hold every stream
        # (the default pool, 256 connections, would queue the rest inside the proxy).
        pool = str(max(config.streams, 256))
        memory = Meter.prepare(
            "meter-memory", work, stub, config.serve_args, GEMINI_METER_UPSTREAM_POOL_SIZE=pool
        )
        memory_service = memory.launch()
        services.append(memory_service)
        outcome.starts.append((memory_service.start_seconds, memory_service.start_cpu_seconds))
        memory_leg = Leg("Gemini Meter", memory_service.port, "", memory.key, None, None)
        outcome.memory = await memory_scenarios(
            memory_service, memory_leg, legs[0], stub, config.streams
        )
        memory_service.stop()
        outcome.processes["Gemini Meter (memory scenarios)"] = {
            "start_s": memory_service.start_seconds,
            "start_cpu_s": memory_service.start_cpu_seconds,
            "answered": outcome.memory["held"]["completed"] + outcome.memory["big"]["completed"],
            "records": memory.records(),
            "received": received(stub, memory.upstream_key),
        }
    outcome.load.append(os.getloadavg()[0])
    return outcome


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[tuple[Path, list[Service]]]:
    """A scratch directory and the services a run starts there: every service is stopped at
    the end; the directory is removed after a run that succeeded, and named after one that
    failed (each process's log and database are in it)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    services: list[Service] = []
    try:
        yield work, services
    except BaseException:
        print(f"the run failed; its logs and databases are in {work}", file=sys.stderr)
        raise
    finally:
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.stop()
    shutil.rmtree(work, ignore_errors=True)


def compile_copy(source: Path) -> Path:
    """``source`` (another copy's checkout) resolved, its package's bytecode compiled."""
    resolved = source.resolve()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(resolved / "proxy")], check=True)
    return resolved


def compile_bytecode() -> None:
    """Write the meter's bytecode before any launch is timed, as installing its wheel does.

    pip compiles a wheel's modules when it installs them; a source checkout run with
    PYTHONDONTWRITEBYTECODE=1 would instead compile every module of the package from
    source at each launch, a cost no installed copy pays.
    """
    spec = importlib.util.find_spec("proxy")
    if spec is None or spec.origin is None:
        raise RuntimeError("the proxy package is not importable here")
    package = str(Path(spec.origin).parent)
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True)


def time_starts(meter: Meter, launches: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds from launch to ready of ``launches`` starts, each stopped at once."""
    starts = []
    for _ in range(max(0, launches)):
        sample = meter.launch()
        sample.stop()
        starts.append((sample.start_seconds, sample.start_cpu_seconds))
    return starts


def startup_only(
    config: Config, against: Path | None = None
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Only the start-to-ready leg: a stub for an upstream and ``config.starts`` launches.

    With ``against`` (a checkout, or any directory holding a ``proxy`` package), as many
    launches of that copy come interleaved with this one's, in alternating order, on the
    same database (made by this copy: both must agree on its schema); its figures are the
    second list. Put first on ``PYTHONPATH``, its package shadows the installed one.
    """
    starts: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    with workspace("gemini-meter-starts-") as (work, services):
        compile_bytecode()
        stub = start_stub(work, config.big_bytes, config.held_chunks, config.held_delay_ms)
        services.append(stub)
        meter = Meter.prepare("meter", work, stub, config.serve_args)
        if against is None:
            starts = time_starts(meter, config.starts)
        else:
            other = replace(meter, env={**meter.env, "PYTHONPATH": str(compile_copy(against))})
            for launch in range(config.starts):
                pair = (meter, other) if launch % 2 == 0 else (other, meter)
                for each in pair:
                    (starts if each is meter else theirs).extend(time_starts(each, 1))
    return starts, theirs


FirstBytes = dict[str, list[list[float]]]


def latency_against(config: Config, against: Path) -> tuple[list[Run], FirstBytes, FirstBytes]:
    """Only the wrk legs: direct calls, this copy's meter and the meter in ``against``
    (a checkout, or a directory holding its ``proxy`` package and ``migrations``, first on
    ``PYTHONPATH``), each leg plain and streamed at each of ``config.concurrency``,
    ``config.reps`` repetitions in rotating order, against one stub. With
    ``config.probe_seconds``, each repetition then times each target's streamed calls to
    their first byte (``first_bytes``), generateContent's and then streamed interactions'
    (whose owner a meter stores before the first byte), in the same rotating order; the
    two are returned after the runs.

    Each meter has its own database (made by its own copy), so two copies of different
    schemas compare too. For an A/B of one change: its CPU per call, its rate under load,
    its effect on the tail, and on a stream's first byte.
    """
    runs: list[Run] = []
    first: FirstBytes = {}
    interactions: FirstBytes = {}
    with workspace("gemini-meter-latency-") as (work, services):
        compile_bytecode()
        source = compile_copy(against)
        stub = start_stub(work, config.big_bytes, config.held_chunks, config.held_delay_ms)
        services.append(stub)
        legs = [Leg("direct", stub.port, "", DIRECT_KEY, None, None)]
        for name, path in (("this copy", None), (f"`{against}`", source)):
            meter = Meter.prepare(
                f"meter-{len(legs)}",
                work,
                stub,
                config.serve_args,
                **({"PYTHONPATH": str(path)} if path else {}),
            )
            service = meter.launch()
            services.append(service)
            legs.append(Leg(name, service.port, "", meter.key, None, service.pid))
        for leg in legs:
            for stream in (False, True):
                if config.warmup:
                    run_wrk(leg, stub, stream=stream, concurrency=1, seconds=config.warmup, rep=-1)
        for rep in range(config.reps):
            runs.extend(repetition(config, legs, stub, rep))
            if config.probe_seconds:
                for leg in rotated(legs, rep):
                    for kind, interaction in ((first, False), (interactions, True)):
                        times = asyncio.run(
                            first_bytes(leg, config.probe_seconds, interaction=interaction)
                        )
                        kind.setdefault(leg.name, []).append([1000 * t for t in times])
    return runs, first, interactions


@dataclass
class Paced:
    """Calls one at a time with a pause between them: one target, one call kind, one pause,
    one repetition."""

    leg: str
    stream: bool
    pause_ms: float
    rep: int
    times_ms: list[float]  # each call's time to its first byte
    cpu_s: float  # the proxy's CPU over the run; the stub's for direct calls

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self.cpu_s / len(self.times_ms) if self.times_ms else float("nan")


async def paced(config: Config, pauses: Sequence[float]) -> list[Paced]:
    """Only calls one at a time, with each of ``pauses`` (ms) between one call's end and
    the next one's start: direct, the bare forwarder, the lean one on uvloop and the
    meter, plain and streamed (to the first byte), ``config.probe_seconds`` of calls per
    target, kind, pause and repetition, the targets in rotating order.

    wrk's c=1 sends each call the moment the last one ends, so every process is always
    warm; a client that pauses between calls, as most do, leaves the machine idle between
    them. This is what each target adds then, and what each of its calls costs in CPU (the
    work a process does per second rather than per call is shared by fewer calls).
    """
    results: list[Paced] = []
    with workspace("gemini-meter-paced-") as (work, services):
        compile_bytecode()
        stub = start_stub(work, config.big_bytes, config.held_chunks, config.held_delay_ms)
        services.append(stub)
        meter = Meter.prepare("meter", work, stub, config.serve_args)
        meter_service = meter.launch()
        services.append(meter_service)
        bare = start_bare(work, stub)
        services.append(bare)
        lean = start_lean(work, stub, uvloop=True)
        services.append(lean)
        legs = [
            Leg("direct", stub.port, "", DIRECT_KEY, None, None),
            Leg(BARE_NAME, bare.port, "", BARE_KEY, None, bare.pid),
            Leg(LEAN_UVLOOP_NAME, lean.port, "", LEAN_UVLOOP_KEY, None, lean.pid),
            Leg("Gemini Meter", meter_service.port, "", meter.key, None, meter_service.pid),
        ]
        for leg in legs:  # warm: a first connection, each route's first call
            for stream in (False, True):
                await first_bytes(leg, 0.2, stream=stream, shape="")
        for pause in pauses:
            for rep in range(config.reps):
                for leg in rotated(legs, rep):
                    for stream in (False, True):
                        pid = leg.pid if leg.pid is not None else stub.pid
                        before = cpu_seconds(pid)
                        times = await first_bytes(
                            leg, config.probe_seconds, stream=stream, shape="", pause=pause / 1000
                        )
                        results.append(
                            Paced(
                                leg.name,
                                stream,
                                pause,
                                rep,
                                [1000 * t for t in times],
                                cpu_seconds(pid) - before,
                            )
                        )
    return results


def render_paced(results: Sequence[Paced]) -> str:
    """The table of ``paced``: per pause, call kind and target, the medians over the
    repetitions of p50 and p99 to the first byte, what each proxy adds to the direct
    call's (of the same repetition), and CPU per call."""
    lines = [
        "| pause ms | call | target | calls | p50 ms | p99 ms | added p50 ms | added p99 ms"
        " | CPU ms per call |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pause, stream in dict.fromkeys((r.pause_ms, r.stream) for r in results):
        scenario = [r for r in results if r.pause_ms == pause and r.stream is stream]
        direct = {r.rep: r for r in scenario if r.leg == "direct"}
        for name in dict.fromkeys(r.leg for r in scenario):
            mine = [r for r in scenario if r.leg == name]
            p50s = [percentile(r.times_ms, 50) for r in mine]
            p99s = [percentile(r.times_ms, 99) for r in mine]
            if name == "direct":
                added50 = added99 = "–"
            else:
                pairs = [(r.times_ms, direct[r.rep].times_ms) for r in mine]
                added50 = _f(median([percentile(m, 50) - percentile(b, 50) for m, b in pairs]))
                added99 = _f(median([percentile(m, 99) - percentile(b, 99) for m, b in pairs]))
            lines.append(
                f"| {pause:g} | {'streamed' if stream else 'plain'} | {name} |"
                f" {sum(len(r.times_ms) for r in mine)} | {median(p50s):.2f} |"
                f" {median(p99s):.2f} | {added50} | {added99} |"
                f" {median([r.cpu_ms_per_call for r in mine]):.3f} |"
            )
    return "\n".join(lines)


def rotated(legs: list[Leg], rep: int) -> list[Leg]:
    """The legs in repetition ``rep``'s order: rotated each time, so that no target always
    runs first (or last)."""
    shift = rep % len(legs)
    return legs[shift:] + legs[:shift]


def repetition(config: Config, legs: list[Leg], stub: Service, rep: int) -> Iterator[Run]:
    """One repetition's wrk runs: each scenario, each leg in the repetition's order."""
    for stream, concurrency in scenarios(config):
        for leg in rotated(legs, rep):
            yield run_wrk(
                leg, stub, stream=stream, concurrency=concurrency, seconds=config.seconds, rep=rep
            )


def render_latency(
    runs: Sequence[Run], first: FirstBytes | None = None, interactions: FirstBytes | None = None
) -> str:
    """The table of ``latency_against``: per call kind and concurrency, medians over the
    repetitions of the rate, p50 and p99, what each meter adds to the direct call's p50 and
    p99, and CPU per call (the stub's own for direct calls, as in the full comparison),
    with the part of a meter's spent by its event loop's thread (the rest is its journal's
    and writer's threads)."""
    lines = [
        "| target | call | c | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms"
        " | CPU ms per call | of which the loop's thread | p99 of each rep |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stream, concurrency in dict.fromkeys((r.stream, r.concurrency) for r in runs):
        scenario = [r for r in runs if r.stream is stream and r.concurrency == concurrency]
        direct = [r for r in scenario if r.leg == "direct"]
        base50 = median([r.p50_ms for r in direct])
        base99 = median([r.p99_ms for r in direct])
        for name in dict.fromkeys(r.leg for r in runs):
            mine = [r for r in scenario if r.leg == name]
            p50, p99 = median([r.p50_ms for r in mine]), median([r.p99_ms for r in mine])
            added = name != "direct"
            cpu = median([r.cpu_ms_per_call("proxy" if added else "stub") for r in mine])
            loop = f"{median([r.cpu_ms_per_call('loop') for r in mine]):.3f}" if added else "–"
            lines.append(
                f"| {name} | {'streamed' if stream else 'plain'} | {concurrency} |"
                f" {median([r.rps for r in mine]):.0f} | {p50:.2f} | {p99:.2f} |"
                f" {_f(p50 - base50) if added else '–'} | {_f(p99 - base99) if added else '–'} |"
                f" {cpu:.3f} | {loop} | {', '.join(f'{r.p99_ms:.2f}' for r in mine)} |"
            )
    for probed, calls in (
        (first, "a streamed generateContent call"),
        (interactions, "a streamed interaction"),
    ):
        if not probed:
            continue
        lines += [
            "",
            f"Time to first byte of {calls} at c=1, one call after another (as in the full"
            " comparison), medians over the repetitions; added is against the direct figure"
            " of the same repetition:",
            "",
            "| target | calls | p50 ms | p99 ms | added p50 ms | added p99 ms"
            " | added p50 of each rep |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        direct_p50s = [percentile(times, 50) for times in probed.get("direct", [])]
        for name, row in summarise_first_bytes(probed).items():
            each = "–"
            if name != "direct":
                p50s = [percentile(times, 50) for times in probed[name]]
                each = ", ".join(f"{m - d:.2f}" for m, d in zip(p50s, direct_p50s, strict=True))
            lines.append(
                f"| {name} | {row['calls']} | {_f(row['p50_ms'])} | {_f(row['p99_ms'])}"
                f" | {_f(row.get('added_p50_ms'))} | {_f(row.get('added_p99_ms'))} | {each} |"
            )
    return "\n".join(lines)


def facts(service: Service) -> dict[str, Any]:
    return {
        "start_s": service.start_seconds,
        "start_cpu_s": service.start_cpu_seconds,
        "rss_mib": rss_mib(service.pid),
    }


def received(stub: Service, key: str) -> int:
    return int(stub_stats(stub)["received"].get(key, 0))


# --------------------------------------------------------------------------- the report


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(outcome: Outcome) -> list[dict[str, Any]]:
    """Per scenario and leg: medians over repetitions; added latency against the same rep."""
    rows = []
    for stream, concurrency in scenarios(outcome.config):
        runs = [r for r in outcome.runs if r.stream == stream and r.concurrency == concurrency]
        direct = {r.rep: r for r in runs if r.leg == "direct"}
        stub_cpu = median([r.cpu_ms_per_call("stub") for r in direct.values()])
        for leg in dict.fromkeys(r.leg for r in runs):
            mine = [r for r in runs if r.leg == leg]
            row: dict[str, Any] = {
                "call": "streamed" if stream else "plain",
                "concurrency": concurrency,
                "target": leg,
                "rps": median([r.rps for r in mine]),
                "p50_ms": median([r.p50_ms for r in mine]),
                "p99_ms": median([r.p99_ms for r in mine]),
                "errors": sum(r.errors for r in mine),
                "stub_cpu_ms": stub_cpu,
            }
            if leg == "direct":
                row["cpu_ms"] = stub_cpu
            else:
                row["cpu_ms"] = median([r.cpu_ms_per_call("proxy") for r in mine])
                row["added_p50_ms"] = median([r.p50_ms - direct[r.rep].p50_ms for r in mine])
                row["added_p99_ms"] = median([r.p99_ms - direct[r.rep].p99_ms for r in mine])
            rows.append(row)
    return rows


def summarise_first_bytes(first: FirstBytes) -> dict[str, dict[str, Any]]:
    """Per target: calls, median p50/p99 over repetitions, added against the same rep."""
    direct = first.get("direct", [])
    out: dict[str, dict[str, Any]] = {}
    for name, reps in first.items():
        row: dict[str, Any] = {
            "calls": sum(len(times) for times in reps),
            "p50_ms": median([percentile(times, 50) for times in reps]),
            "p99_ms": median([percentile(times, 99) for times in reps]),
        }
        if name != "direct" and len(direct) == len(reps):
            for q in (50, 99):
                row[f"added_p{q}_ms"] = median(
                    [percentile(t, q) - percentile(d, q) for t, d in zip(reps, direct, strict=True)]
                )
        out[name] = row
    return out


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "–"
    return f"{a / b:.2f}×" if a / b < 10 else f"{a / b:.0f}×"


def render(outcome: Outcome, command: str) -> str:
    config = outcome.config
    rows = summarise(outcome)
    by = {(r["call"], r["concurrency"], r["target"]): r for r in rows}
    lines = [
        "## Direct calls, Gemini Meter and LiteLLM's proxy, in one run",
        "",
        *(
            [
                "**Preliminary figures**, taken on a machine busy with other work: they show"
                " that the harness works, not what the proxies can do. Measure again on a"
                " quiet machine.",
                "",
            ]
            if config.preliminary
            else []
        ),
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()},"
        f" {os.cpu_count()} cores, Python {platform.python_version()}, wrk 1 thread,"
        f" {config.seconds} s per run, {config.reps} interleaved repetitions (medians);"
        " one upstream stub (`benchmarks/stub.py`), each proxy one process with its defaults"
        " and no access log, Gemini Meter on the embedded default (SQLite, journal on)"
        + (f", `serve {' '.join(config.serve_args)}`" if config.serve_args else "")
        + (
            f", LiteLLM {LITELLM_VERSION} through its Gemini pass-through route, without a database"
            if config.litellm
            else ", LiteLLM skipped"
        )
        + f". Everything shares the machine; its load average was {outcome.load[0]:.1f} at the"
        f" start and {outcome.load[-1]:.1f} at the end.",
        "",
        f"Reproduce: `{command}`",
        "",
        "| call | c | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms"
        " | CPU ms per call | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['call']} | {r['concurrency']} | {r['target']} | {r['rps']:.0f}"
            f" | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {_f(r.get('added_p50_ms'))}"
            f" | {_f(r.get('added_p99_ms'))} | {_f(r['cpu_ms'], 3)} | {r['errors']} |"
        )
    lines += [
        "",
        "For direct calls, CPU per call is the stub's own. Added latency is the proxy's p50"
        " (p99) minus the direct p50 (p99) of the same repetition; wrk times a streamed call to"
        " its last byte (its first byte is timed below).",
        "",
        "Ratios. The issue's targets: Gemini Meter's CPU per plain call at most 2× the"
        " stub's, its rate at c=50 at least 0.40× the direct rate, and at c=1 at most"
        " 0.5 ms added at p50 and 2 ms at p99, plain and streamed.",
        "",
        "| call | c | Meter req/s ÷ direct | Meter CPU ÷ stub CPU | bare forwarder CPU ÷ stub"
        " CPU | lean forwarder CPU ÷ stub CPU | lean forwarder + uvloop CPU ÷ stub CPU"
        " | Meter CPU ÷ bare forwarder CPU"
        " | LiteLLM CPU ÷ Meter CPU | Meter req/s ÷ LiteLLM | LiteLLM added p50 ÷ Meter"
        " | LiteLLM added p99 ÷ Meter |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stream, concurrency in scenarios(config):
        call = "streamed" if stream else "plain"
        direct = by.get((call, concurrency, "direct"), {})
        meter = by.get((call, concurrency, "Gemini Meter"), {})
        peer = by.get((call, concurrency, "LiteLLM"), {})
        floor = by.get((call, concurrency, BARE_NAME), {})
        lean = by.get((call, concurrency, LEAN_NAME), {})
        lean_uvloop = by.get((call, concurrency, LEAN_UVLOOP_NAME), {})
        lines.append(
            f"| {call} | {concurrency} | {_ratio(meter.get('rps'), direct.get('rps'))}"
            f" | {_ratio(meter.get('cpu_ms'), direct.get('cpu_ms'))}"
            f" | {_ratio(floor.get('cpu_ms'), direct.get('cpu_ms'))}"
            f" | {_ratio(lean.get('cpu_ms'), direct.get('cpu_ms'))}"
            f" | {_ratio(lean_uvloop.get('cpu_ms'), direct.get('cpu_ms'))}"
            f" | {_ratio(meter.get('cpu_ms'), floor.get('cpu_ms'))}"
            f" | {_ratio(peer.get('cpu_ms'), meter.get('cpu_ms'))}"
            f" | {_ratio(meter.get('rps'), peer.get('rps'))}"
            f" | {_ratio(peer.get('added_p50_ms'), meter.get('added_p50_ms'))}"
            f" | {_ratio(peer.get('added_p99_ms'), meter.get('added_p99_ms'))} |"
        )
    first = summarise_first_bytes(outcome.first_bytes)
    if first:
        lines += [
            "",
            f"Time to first byte of a streamed call at c=1, one call after another for"
            f" {config.probe_seconds:g} s per target and repetition (an aiohttp client on one"
            " connection; the stub sends the first of three events at once, the others 10 ms"
            " apart). Medians over the repetitions; added is against the direct figure of the"
            " same repetition:",
            "",
            "| target | calls | p50 ms | p99 ms | added p50 ms | added p99 ms"
            " | added p50 ÷ Meter's | added p99 ÷ Meter's |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        meter = first.get("Gemini Meter", {})
        for name, f in first.items():
            # Only a peer is put against Gemini Meter.
            against = ["–", "–"]
            if name not in ("direct", "Gemini Meter", *FORWARDERS):
                against = [_ratio(f.get(k), meter.get(k)) for k in ("added_p50_ms", "added_p99_ms")]
            lines.append(
                f"| {name} | {f['calls']} | {_f(f['p50_ms'])} | {_f(f['p99_ms'])}"
                f" | {_f(f.get('added_p50_ms'))} | {_f(f.get('added_p99_ms'))}"
                f" | {against[0]} | {against[1]} |"
            )
    interactions = summarise_first_bytes(outcome.interaction_first_bytes)
    if interactions:
        lines += [
            "",
            f"The same for streamed interactions (`POST /v1beta/interactions`, `stream: true`),"
            f" {config.probe_seconds:g} s per target and repetition: the stub sends"
            " `interaction.created`, which names a new interaction, at once and"
            " `interaction.completed` 10 ms later, and a meter stores the interaction's owner"
            " before its first byte goes out. LiteLLM is left out: its pass-through route is"
            " run here for generateContent only:",
            "",
            "| target | calls | p50 ms | p99 ms | added p50 ms | added p99 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, f in interactions.items():
            lines.append(
                f"| {name} | {f['calls']} | {_f(f['p50_ms'])} | {_f(f['p99_ms'])}"
                f" | {_f(f.get('added_p50_ms'))} | {_f(f.get('added_p99_ms'))} |"
            )
    lines += [
        "",
        "Each process after the load. A meter's records are counted in its SQLite file after"
        " a graceful stop, against the calls the stub received with that meter's upstream key;"
        " a call the client left before its response ended is received upstream but not"
        " answered, and still owes a record. Warm-up included:",
        "",
        "| process | start to ready s | CPU until ready s | RSS after load MiB"
        " | responses answered in full | calls received upstream | records stored | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lost = outcome.lost()
    for name, p in outcome.processes.items():
        label = "stub (direct)" if name == "direct" else name
        records = str(p["records"]) if "records" in p else "not kept (no database)"
        if name in ("direct", *FORWARDERS):
            records = "–"  # they keep no records
        lines.append(
            f"| {label} | {_f(p.get('start_s'))} | {_f(p.get('start_cpu_s'))}"
            f" | {_f(p.get('rss_mib'), 0)} | {p.get('answered', '–')}"
            f" | {p.get('received', '–')} | {records} | {lost.get(name, '–')} |"
        )
    held, big = outcome.memory.get("held", {}), outcome.memory.get("big", {})
    if held and big:
        lines += [
            "",
            f"Resident memory of a fresh Gemini Meter (upstream pool raised to"
            f" {max(config.streams, 256)}), sampled every 20 ms (target: under 150 MB):",
            "",
            "| scenario | completed | RSS idle MiB | RSS peak MiB | RSS after MiB | notes |",
            "|---|---:|---:|---:|---:|---|",
            f"| {held['streams']} streams at once, {config.held_chunks} events"
            f" {config.held_delay_ms:.0f} ms apart | {held['completed']}"
            f" | {_f(held['rss_idle_mib'], 0)} | {_f(held['rss_peak_mib'], 0)}"
            f" | {_f(held['rss_after_mib'], 0)} | {held['upstream_peak_open']} open at the"
            " stub at once |",
            f"| one {config.big_bytes / 2**20:.0f} MiB stream | {big['completed']}"
            f" | {_f(big['rss_idle_mib'], 0)} | {_f(big['rss_peak_mib'], 0)}"
            f" | {_f(big['rss_after_mib'], 0)} | {big['meter_bytes']} bytes relayed,"
            f" {big['meter_mib_per_s']:.0f} MiB/s (direct: {big['direct_mib_per_s']:.0f}"
            " MiB/s) |",
        ]
    if outcome.starts:
        lines += ["", render_starts(outcome.starts)]
    return "\n".join(lines)


def render_starts(starts: Sequence[tuple[float, float]], of: str = "") -> str:
    """The start-to-ready sentence: median, range and CPU of (wall, CPU) launches.

    ``of`` names the copy launched, when two are compared.
    """
    walls = [wall for wall, _ in starts]
    cpus = [cpu for _, cpu in starts]
    return (
        f"Start to ready{f' of {of}' if of else ''} (launch of `gemini-meter serve` to the"
        f" first 200 on `/readyz`) on"
        f" the embedded default, bytecode compiled as an installed wheel has it,"
        f" {len(walls)} launches: median {median(walls):.2f} s"
        f" (min {min(walls):.2f}, max {max(walls):.2f}; target: under 0.5 s), of which"
        f" CPU {median(cpus):.2f} s."
    )


def write_section(path: Path, body: str, name: str = SECTION) -> None:
    """Put ``body`` between the ``name`` markers of ``path``, keeping everything else.

    A file without those markers gets them, with the body, at its end. The markers are HTML
    comments, so the rendered page does not show them.
    """
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration of each run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--warmup", type=int, default=2, help="seconds per target and call kind")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--streams", type=int, default=1000, help="streams held open at once")
    parser.add_argument("--big-mib", type=int, default=100, help="size of the one big stream")
    parser.add_argument("--starts", type=int, default=5, help="launches timed to ready")
    parser.add_argument(
        "--probe-seconds",
        type=float,
        default=10.0,
        help="time-to-first-byte calls per target and repetition, in seconds",
    )
    parser.add_argument(
        "--serve-args",
        default="",
        help="extra arguments for `gemini-meter serve`, e.g. '--workers 2'",
    )
    parser.add_argument("--write", type=Path, help="update this harness's section of the file")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument(
        "--preliminary",
        action="store_true",
        help="label the figures as taken on a busy machine, to be measured again",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds, no LiteLLM: checks only that it completes and loses nothing",
    )
    parser.add_argument(
        "--startup-only",
        action="store_true",
        help="only time --starts launches to ready (no wrk, no LiteLLM) and print the figure",
    )
    parser.add_argument(
        "--startup-against",
        type=Path,
        metavar="DIR",
        help="with --startup-only: interleave as many launches of the proxy package in DIR "
        "(a checkout of another commit, e.g. from `git archive`) and print its figure too",
    )
    parser.add_argument(
        "--latency-against",
        type=Path,
        metavar="DIR",
        help="only the wrk legs (plain and streamed at each --concurrency, --reps of --seconds "
        "each) and the first-byte probes, generateContent's and interactions' (--probe-seconds "
        "each per rep; 0 leaves them out): direct "
        "calls, this copy's meter and the one in DIR (a checkout of another commit, or its "
        "proxy and migrations from `git archive`), interleaved",
    )
    parser.add_argument(
        "--paced",
        type=float,
        nargs="+",
        metavar="MS",
        help="only calls one at a time with each pause of MS milliseconds between them: "
        "time to first byte and CPU per call of direct calls, the bare and lean forwarders "
        "and the meter, --probe-seconds of calls each, --reps repetitions",
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    if args.smoke:
        return Config(
            seconds=1,
            reps=1,
            concurrency=[1, 50],
            litellm=False,
            warmup=0,
            streams=50,
            big_bytes=4 * 2**20,
            held_chunks=3,
            held_delay_ms=100,
            starts=1,
            serve_args=shlex.split(args.serve_args),
            smoke=True,
            probe_seconds=1.0,
        )
    return Config(
        seconds=args.seconds,
        reps=args.reps,
        concurrency=args.concurrency,
        litellm=not args.no_litellm,
        warmup=args.warmup,
        streams=args.streams,
        big_bytes=args.big_mib * 2**20,
        held_chunks=20,
        held_delay_ms=250,
        starts=args.starts,
        serve_args=shlex.split(args.serve_args),
        smoke=False,
        probe_seconds=args.probe_seconds,
        preliminary=args.preliminary,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.startup_only:
        load = os.getloadavg()[0]
        mine, theirs = startup_only(config_from(args), args.startup_against)
        if args.startup_against is None:
            print(render_starts(mine))
        else:
            print(render_starts(mine, "this copy"))
            print(render_starts(theirs, f"`{args.startup_against}`"))
            print(load_line(load))
        return 0
    if args.paced is not None:
        load = os.getloadavg()[0]
        print(render_paced(asyncio.run(paced(config_from(args), args.paced))))
        print(load_line(load))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is missing: install Debian's package (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.latency_against is not None:
        load = os.getloadavg()[0]
        print(render_latency(*latency_against(config_from(args), args.latency_against)))
        print(load_line(load))
        return 0
    if args.smoke and args.write:
        print("a smoke run's figures mean nothing: --write needs a full run", file=sys.stderr)
        return 2
    config = config_from(args)
    outcome = asyncio.run(run(config))
    report = render(outcome, reproduce(argv if argv is not None else sys.argv[1:]))
    print(report)
    if outcome.skipped:
        print(f"\nskipped: {', '.join(outcome.skipped)}", file=sys.stderr)
    if args.write:
        write_section(args.write, report)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": asdict(config),
                    "runs": [asdict(r) for r in outcome.runs],
                    "rows": summarise(outcome),
                    "first_bytes": summarise_first_bytes(outcome.first_bytes),
                    "interaction_first_bytes": summarise_first_bytes(
                        outcome.interaction_first_bytes
                    ),
                    "processes": outcome.processes,
                    "memory": outcome.memory,
                    "starts": outcome.starts,
                    "skipped": outcome.skipped,
                    "lost": outcome.lost(),
                },
                indent=2,
            )
        )
    failures = problems(outcome)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


def load_line(start: float) -> str:
    """How busy the machine was: the 1-minute load average at ``start`` and now."""
    return f"\nLoad average (1 min): {start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."


def reproduce(argv: Sequence[str]) -> str:
    """The command line that reproduces a report: these arguments, less ``--json``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json=") and arg != "--preliminary":
            kept.append(shlex.quote(arg))
    return " ".join(["python benchmarks/compare.py", *kept])


def problems(outcome: Outcome) -> list[str]:
    """What makes the run fail: a lost record always; in a smoke run, anything incomplete."""
    found = [
        f"{name}: {n} calls received upstream without a record (or records without a call)"
        for name, n in outcome.lost().items()
        if n
    ]
    if outcome.config.smoke:
        for r in outcome.runs:
            if r.errors or not r.ok:
                kind = "streamed" if r.stream else "plain"
                found.append(f"{r.leg}, {kind}, c={r.concurrency}: {r.ok} ok, {r.errors} errors")
        for name, reps in outcome.first_bytes.items():
            if not all(reps):
                found.append(f"{name}: no streamed call timed to its first byte")
        held, big = outcome.memory.get("held", {}), outcome.memory.get("big", {})
        if held.get("completed") != held.get("streams"):
            found.append(
                f"held streams: {held.get('completed')} of {held.get('streams')} completed;"
                f" failures: {held.get('failures')}"
            )
        if big.get("completed") != 1 or big.get("meter_bytes") != big.get("direct_bytes"):
            found.append(f"big stream incomplete: {big}")
    return found


if __name__ == "__main__":
    sys.exit(main())
