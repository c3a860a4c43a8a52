"""Added latency and throughput of the proxy, against a direct call in the same run.

Starts the emulator and the proxy as separate processes (``gemini-meter
emulate`` and ``gemini-meter serve`` on a fresh SQLite file), issues a key, then
for each scenario (plain and streamed, at each concurrency) sends the same
closed-loop load first straight to the emulator and then through the proxy.
Reports p50/p99 latency of each, the added latency (proxy minus direct), the
requests per second of each, and the proxy's resident memory.

    python benchmarks/bench_proxy.py                    # prints a markdown table
    python benchmarks/bench_proxy.py --requests 2000 --write docs/benchmarks.md
    python benchmarks/bench_proxy.py --journal          # journal on vs off, then SIGKILL

``--write`` replaces only this report's section of the file (between its HTML-comment
markers), so the other harnesses' figures stay.

``--journal`` runs two proxies side by side on the same emulator, one with the
durable journal (the default) and one without, interleaving their runs; it
reports the journal's cost in added p50/p99 latency, then SIGKILLs both right
after a last burst, restarts them, and counts responses delivered against
records stored.

Machines are noisy: compare the two columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
# The repository root on the path, as in bench_writer.py, so that compare is imported by its
# package path (benchmarks.compare), the name the tests and the type checker know it by.
sys.path.insert(0, str(ROOT))
BODY = {"contents": [{"role": "user", "parts": [{"text": "Benchmark prompt " * 8}]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


@dataclass
class Result:
    latencies: list[float]
    elapsed: float
    errors: int

    def pct(self, p: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed


async def load(
    url: str, headers: dict[str, str], requests: int, concurrency: int, stream: bool
) -> Result:
    """Closed loop: ``concurrency`` workers, each sending its next request when one ends."""
    latencies: list[float] = []
    errors = 0
    remaining = requests
    payload = json.dumps(BODY).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with session.post(
                    url, data=payload, headers={**headers, "Content-Type": "application/json"}
                ) as response:
                    if stream:
                        async for _ in response.content.iter_any():
                            pass
                    else:
                        await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        # warm the pools on both sides before measuring
        await asyncio.gather(
            *(worker_once(session, url, payload, headers) for _ in range(concurrency))
        )
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(latencies, elapsed, errors)


async def worker_once(
    session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str]
) -> None:
    async with session.post(
        url, data=payload, headers={**headers, "Content-Type": "application/json"}
    ) as response:
        await response.read()


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per scenario and target")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--write", type=Path, help="also write the markdown report here")
    parser.add_argument(
        "--journal", action="store_true", help="compare the journal on and off, then SIGKILL"
    )
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (--journal)")
    args = parser.parse_args()
    if args.journal:
        await journal_main(args)
        return

    work = Path(tempfile.mkdtemp(prefix="gemini-meter-bench-"))
    env = {
        **os.environ,
        "GEMINI_METER_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'bench.db'}",
        "GEMINI_METER_KEY_SECRET_FILE": str(work / "secret"),
        "GEMINI_METER_UPSTREAM_API_KEY": "bench-upstream-key",
        "GEMINI_METER_LOG_LEVEL": "WARNING",
    }
    emu_port, proxy_port = free_port(), free_port()
    emulator = start(
        ["emulate", "--port", str(emu_port), "--chunk-delay-ms", str(args.chunk_delay_ms)], env
    )
    created = subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", "keys", "create", "--user", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    proxy = start(
        ["serve", "--port", str(proxy_port), "--upstream", f"http://127.0.0.1:{emu_port}"], env
    )
    rows = []
    try:
        await wait_ready(f"http://127.0.0.1:{emu_port}/healthz")
        await wait_ready(f"http://127.0.0.1:{proxy_port}/healthz")
        for stream in (False, True):
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            path = f"/v1beta/models/gemini-2.5-flash:{method}"
            for concurrency in args.concurrency:
                direct = await load(
                    f"http://127.0.0.1:{emu_port}{path}",
                    {"x-goog-api-key": "bench-upstream-key"},
                    args.requests,
                    concurrency,
                    stream,
                )
                proxied = await load(
                    f"http://127.0.0.1:{proxy_port}{path}",
                    {"x-goog-api-key": key},
                    args.requests,
                    concurrency,
                    stream,
                )
                rows.append(
                    {
                        "scenario": "stream (SSE)" if stream else "plain",
                        "concurrency": concurrency,
                        "direct_p50": direct.pct(50),
                        "direct_p99": direct.pct(99),
                        "proxy_p50": proxied.pct(50),
                        "proxy_p99": proxied.pct(99),
                        "added_p50": proxied.pct(50) - direct.pct(50),
                        "added_p99": proxied.pct(99) - direct.pct(99),
                        "direct_rps": direct.rps,
                        "proxy_rps": proxied.rps,
                        "errors": direct.errors + proxied.errors,
                        "proxy_rss": rss_mib(proxy.pid),
                    }
                )
    finally:
        # SIGTERM is a graceful stop: the writer flushes what it still holds.
        for process in (proxy, emulator):
            process.terminate()
            process.wait(timeout=30)
    # every proxied call (the warm-up ones included) must have been stored
    stored = subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", "usage", "--format", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    recorded = sum(int(r["requests"]) for r in json.loads(stored.stdout))
    sent = 2 * sum(args.requests + c for c in args.concurrency)
    report = render(rows, args, recorded, sent)
    print(report)
    if args.write:
        write_report(args.write, report, "benchmarks/bench_proxy.py")


def render(
    rows: list[dict[str, float | int | str]], args: argparse.Namespace, recorded: int, sent: int
) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; {args.requests} requests per scenario and target,"
        " closed loop, emulator upstream with no added latency; emulator, proxy and load"
        " generator share the machine.",
        "",
        "Reproduce: `python benchmarks/bench_proxy.py --requests"
        f" {args.requests} --write docs/benchmarks.md`",
        "",
        "| scenario | concurrency | direct p50 ms | proxy p50 ms | added p50 ms"
        " | direct p99 ms | proxy p99 ms | added p99 ms | direct req/s | proxy req/s"
        " | proxy RSS MiB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['concurrency']} | {r['direct_p50']:.2f} | {r['proxy_p50']:.2f}"
            f" | **{r['added_p50']:.2f}** | {r['direct_p99']:.2f} | {r['proxy_p99']:.2f}"
            f" | **{r['added_p99']:.2f}** | {r['direct_rps']:.0f} | {r['proxy_rps']:.0f}"
            f" | {r['proxy_rss']:.0f} | {r['errors']} |"
        )
    lines += [
        "",
        f"Calls sent through the proxy, warm-up included: {sent}; records stored by its"
        f" batching writer after a graceful stop: {recorded}.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- --journal


@dataclass
class Proxy:
    name: str
    env: dict[str, str]
    port: int
    key: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start(["serve", "--port", str(self.port)], self.env)

    def records(self) -> int:
        stored = subprocess.run(
            [sys.executable, "-m", "proxy.cli.main", "usage", "--format", "json"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return sum(int(r["requests"]) for r in json.loads(stored.stdout))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def journal_main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="gemini-meter-bench-journal-"))
    emu_port = free_port()
    base = {
        **os.environ,
        "GEMINI_METER_UPSTREAM_API_KEY": "bench-upstream-key",
        "GEMINI_METER_UPSTREAM": f"http://127.0.0.1:{emu_port}",
        "GEMINI_METER_LOG_LEVEL": "WARNING",
    }
    emulator = start(["emulate", "--port", str(emu_port)], base)
    proxies = []
    for name, enabled in (("journal off", "false"), ("journal on", "true")):
        env = {
            **base,
            "GEMINI_METER_DATABASE_URL": f"sqlite+aiosqlite:///{work / name.replace(' ', '-')}.db",
            "GEMINI_METER_KEY_SECRET_FILE": str(work / f"{name.replace(' ', '-')}.secret"),
            "GEMINI_METER_JOURNAL_ENABLED": enabled,
        }
        created = subprocess.run(
            [sys.executable, "-m", "proxy.cli.main", "keys", "create", "--user", "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        proxies.append(Proxy(name, env, free_port(), created.stdout.strip().splitlines()[-1]))
    rows: list[dict[str, float | int | str]] = []
    delivered = {p.name: 0 for p in proxies}
    try:
        for proxy in proxies:
            proxy.start()
        await wait_ready(f"http://127.0.0.1:{emu_port}/healthz")
        for proxy in proxies:
            await wait_ready(f"http://127.0.0.1:{proxy.port}/healthz")
        for stream in (False, True):
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            path = f"/v1beta/models/gemini-2.5-flash:{method}"
            for concurrency in args.concurrency:
                runs: dict[str, list[Result]] = {"direct": [], **{p.name: [] for p in proxies}}
                for _ in range(args.reps):
                    runs["direct"].append(
                        await load(
                            f"http://127.0.0.1:{emu_port}{path}",
                            {"x-goog-api-key": "bench-upstream-key"},
                            args.requests,
                            concurrency,
                            stream,
                        )
                    )
                    for proxy in proxies:
                        result = await load(
                            f"http://127.0.0.1:{proxy.port}{path}",
                            {"x-goog-api-key": proxy.key},
                            args.requests,
                            concurrency,
                            stream,
                        )
                        runs[proxy.name].append(result)
                        delivered[proxy.name] += len(result.latencies) - result.errors
                        delivered[proxy.name] += concurrency  # the warm-up calls
                row: dict[str, float | int | str] = {
                    "scenario": "stream (SSE)" if stream else "plain",
                    "concurrency": concurrency,
                }
                for name, results in runs.items():
                    row[f"{name} p50"] = median([r.pct(50) for r in results])
                    row[f"{name} p99"] = median([r.pct(99) for r in results])
                rows.append(row)
        # A last burst, then SIGKILL at once: what survives is what was journaled.
        for proxy in proxies:
            result = await load(
                f"http://127.0.0.1:{proxy.port}/v1beta/models/gemini-2.5-flash:generateContent",
                {"x-goog-api-key": proxy.key},
                args.requests,
                50,
                False,
            )
            delivered[proxy.name] += len(result.latencies) - result.errors + 50
            assert proxy.process is not None
            proxy.process.kill()
            proxy.process.wait()
        # Restart (the journal is replayed), then stop gracefully.
        for proxy in proxies:
            proxy.start()
        for proxy in proxies:
            await wait_ready(f"http://127.0.0.1:{proxy.port}/healthz")
    finally:
        for process in [p.process for p in proxies] + [emulator]:
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    stored = {p.name: p.records() for p in proxies}
    report = render_journal(rows, args, delivered, stored)
    print(report)
    if args.write:
        write_report(args.write, report, "benchmarks/bench_proxy.py --journal")


def render_journal(
    rows: list[dict[str, float | int | str]],
    args: argparse.Namespace,
    delivered: dict[str, int],
    stored: dict[str, int],
) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; {args.requests} requests per scenario and target,"
        f" {args.reps} interleaved repetitions (medians), closed loop, SQLite, emulator upstream"
        " with no added latency, all on one machine.",
        "",
        f"Reproduce: `python benchmarks/bench_proxy.py --journal --requests {args.requests}"
        f" --reps {args.reps} --write docs/benchmarks.md`",
        "",
        "| scenario | concurrency | direct p50 ms | added p50, journal off | added p50, journal on"
        " | **journal's p50 cost** | direct p99 ms | added p99, journal off"
        " | added p99, journal on | **journal's p99 cost** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [str(r["scenario"]), str(r["concurrency"])]
        for q in ("p50", "p99"):
            direct = float(r[f"direct {q}"])
            off = float(r[f"journal off {q}"]) - direct
            on = float(r[f"journal on {q}"]) - direct
            cells += [f"{direct:.2f}", f"{off:.2f}", f"{on:.2f}", f"**{on - off:+.2f}**"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Then a last burst at concurrency 50, SIGKILL right after it, a restart and a"
        " graceful stop:",
        "",
        "| proxy | responses delivered | records stored | lost |",
        "|---|---:|---:|---:|",
    ]
    for name in delivered:
        lost = delivered[name] - stored[name]
        lines.append(f"| {name} | {delivered[name]} | {stored[name]} | {lost} |")
    return "\n".join(lines)


def write_report(path: Path, report: str, name: str) -> None:
    """Replace this report's section of ``path`` (its markers), keeping the other sections."""
    from benchmarks.compare import write_section

    write_section(path, report, name)


if __name__ == "__main__":
    asyncio.run(main())
