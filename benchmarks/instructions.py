"""Instructions per call: issue 10's CPU target, measured where the machine's noise cannot reach.

``compare.py`` reads CPU time from ``/proc``, which other load on the machine, and a
virtual machine's own overheads, move from run to run. Here each target runs under
valgrind's callgrind, which counts the instructions a process executes in user space,
the same count for the same code and inputs whatever else the machine is doing. For
each target, calls go one after another on one keep-alive connection from this process:

1. a warm-up of ``--warmup`` plain and streamed calls, uncounted (callgrind starts with
   its instrumentation off, so start-up is not counted either);
2. ``--calls`` plain calls counted, then ``--calls`` streamed ones (the stub's three SSE
   events), each leg ending with a pause long enough for the meter's writer and journal
   to store what the calls left (their work is counted: every thread of the process is);
3. instructions per call = the leg's count / ``--calls``.

The targets are those of ``compare.py`` at c=1: ``direct`` is the upstream stub itself
(a second one, under callgrind, the proxies' own upstream running at full speed), then the
bare aiohttp forwarder, the lean forwarder (asyncio protocols and httptools) and Gemini
Meter on its embedded default (SQLite, with its journal). Issue 10's target is the meter at
most 2x the stub per plain call.

What the count leaves out, and what it weighs more than a full-speed run would:

- the kernel's work (system calls, the journal's fsync, TCP on loopback) is not counted:
  ``compare.py``'s CPU per call has it;
- work done on a timer, not per call (the writer's batch every 0.05 s, the budget alert
  evaluator's pass every second while records arrive), falls on fewer calls under
  callgrind's slowdown (tens of times) than at full speed, so the meter's figure is, if
  anything, above what the same code spends per call under load.

    python benchmarks/instructions.py                      # 300 calls of each kind
    python benchmarks/instructions.py --targets direct meter --calls 100
    python benchmarks/instructions.py --write docs/benchmarks.md

Needs valgrind (Debian's package: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

# Appended, not first: a PYTHONPATH given for another copy of the proxy package still wins
# (parts.py imports this module, and its steps import the package).
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import (  # noqa: E402
    BARE,
    BODY,
    DIRECT_KEY,
    LEAN,
    MODEL,
    STUB,
    Meter,
    Service,
    clean_env,
    compile_bytecode,
    free_port,
    launch,
    start_stub,
    write_section,
)

SECTION: Final = "benchmarks/instructions.py"
TARGETS: Final = ("direct", "bare", "lean", "meter")
NAMES: Final = {
    "direct": "upstream stub (direct)",
    "bare": "bare forwarder (aiohttp)",
    "lean": "lean forwarder (asyncio, httptools)",
    "meter": "Gemini Meter",
}
KINDS: Final = ("plain", "streamed")
# After a counted leg: the meter's writer commits on a 0.05 s clock and its journal's group
# commit follows each call; under callgrind both run tens of times slower than at speed.
SETTLE_SECONDS: Final = 3.0
READY_TIMEOUT: Final = 300.0  # a start under valgrind (not instrumented yet) is slow


@dataclass(frozen=True)
class Figure:
    target: str
    kind: str
    calls: int
    instructions: int

    @property
    def per_call(self) -> float:
        return self.instructions / self.calls


def callgrind(out: Path) -> list[str]:
    """The command prefix: counting starts switched off, ``callgrind_control -i on`` turns
    it on; each dump is written to ``out.<n>``."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
    ]


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def dumped_instructions(out: Path) -> int:
    """The instruction count of the newest dump of ``out`` (``out.1``, ``out.2``...)."""
    dumps = [p for p in out.parent.glob(out.name + ".*") if p.suffix[1:].isdigit()]
    newest = max(dumps, key=lambda p: int(p.suffix[1:]))
    match = re.search(r"^totals: (\d+)", newest.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {newest}")
    return int(match.group(1))


class Client:
    """Calls one after another on one keep-alive connection, as a c=1 client does."""

    def __init__(self, port: int, key: str) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self._headers = {"content-type": "application/json", "x-goog-api-key": key}

    def call(self, kind: str) -> None:
        path = f"/v1beta/models/{MODEL}:generateContent"
        if kind == "streamed":
            path = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
        self._connection.request("POST", path, body=BODY, headers=self._headers)
        response = self._connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")

    def close(self) -> None:
        self._connection.close()


@dataclass
class Outcome:
    figures: list[Figure]
    # The meter's records after its graceful stop, and the calls made to it.
    records: int | None = None
    calls_made: int = 0


def command_for(target: str, port: int, upstream: Service) -> tuple[list[str], str]:
    """The command that serves ``target`` on ``port``, and its readiness path."""
    upstream_url = f"--upstream=http://127.0.0.1:{upstream.port}"
    if target == "direct":
        return [sys.executable, str(STUB), f"--port={port}"], "/_stub/stats"
    if target == "bare":
        return [sys.executable, str(BARE), f"--port={port}", upstream_url], "/_bare/ready"
    if target == "lean":
        return [sys.executable, str(LEAN), f"--port={port}", upstream_url], "/_lean/ready"
    return [sys.executable, "-m", "proxy.cli.main", "serve", f"--port={port}"], "/readyz"


def measure(
    target: str, work: Path, upstream: Service, calls: int, warmup: int, settle: float
) -> Outcome:
    """Start ``target`` under callgrind, warm it, count each kind of call; stop it."""
    out = work / f"{target}.callgrind"
    port = free_port()
    command, ready = command_for(target, port, upstream)
    meter = Meter.prepare("meter", work, upstream, []) if target == "meter" else None
    service = launch(
        target,
        callgrind(out) + command,
        env=meter.env if meter else clean_env(),
        cwd=meter.work if meter else work,
        port=port,
        ready_path=ready,
        timeout=READY_TIMEOUT,
    )
    client = Client(port, meter.key if meter else DIRECT_KEY)
    outcome = Outcome([])
    try:
        for kind in KINDS:
            for _ in range(warmup):
                client.call(kind)
        time.sleep(settle)
        for kind in KINDS:
            control(service.pid, "-i", "on")
            for _ in range(calls):
                client.call(kind)
            time.sleep(settle)
            control(service.pid, "-i", "off")
            control(service.pid, "--dump")
            outcome.figures.append(Figure(target, kind, calls, dumped_instructions(out)))
    finally:
        client.close()
        service.stop(timeout=120)
    if meter is not None:
        outcome.records = meter.records()
        outcome.calls_made = len(KINDS) * (warmup + calls)
    return outcome


def run(targets: Sequence[str], calls: int, warmup: int, settle: float) -> Outcome:
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="gemini-meter-instructions-") as tmp:
        work = Path(tmp)
        upstream = start_stub(work, 1 << 20, 4, 10)  # compare.py's big and held streams, unused
        try:
            outcome = Outcome([])
            for target in targets:
                one = measure(target, work, upstream, calls, warmup, settle)
                outcome.figures += one.figures
                if one.records is not None:
                    outcome.records, outcome.calls_made = one.records, one.calls_made
            return outcome
        finally:
            upstream.stop()


def render(figures: Sequence[Figure], command: str, calls: int) -> str:
    per: dict[tuple[str, str], float] = {(f.target, f.kind): f.per_call for f in figures}
    targets = list(dict.fromkeys(f.target for f in figures))
    day = datetime.now(UTC).date().isoformat()
    lines = [
        "## Instructions per call (callgrind)",
        "",
        f"User-space instructions per call at c=1, {calls} calls of each kind per target, one"
        f" run ({day}, {platform.machine()}, Python {platform.python_version()}); the same"
        " count whatever the machine's load. The kernel's work is not in it.",
        "",
        f"    {command}",
        "",
        "| target | plain: k instructions per call | ÷ stub | streamed: k instructions"
        " per call | ÷ stub |",
        "|---|---:|---:|---:|---:|",
    ]

    def ratio(target: str, kind: str) -> str:
        if ("direct", kind) not in per or target == "direct":
            return "–"
        return f"{per[(target, kind)] / per[('direct', kind)]:.2f}×"

    for target in targets:
        lines.append(
            f"| {NAMES[target]} | {per[(target, 'plain')] / 1e3:,.0f} | {ratio(target, 'plain')}"
            f" | {per[(target, 'streamed')] / 1e3:,.0f} | {ratio(target, 'streamed')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="counted calls of each kind")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted calls of each kind")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_SECONDS, help="pause after each leg, seconds"
    )
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--write", type=Path, help="update this harness's section of the file")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is missing: install Debian's package (apt-get install valgrind)")
        return 2
    outcome = run(args.targets, args.calls, args.warmup, args.settle)
    figures = outcome.figures
    command = "python benchmarks/instructions.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = render(figures, command.strip(), args.calls)
    print(report)
    if outcome.records is not None:
        # every call the meter answered is recorded: a count from outside the meter
        print(f"Gemini Meter stored {outcome.records} records of {outcome.calls_made} calls.")
    if args.json:
        figures_json = [{**f.__dict__, "per_call": f.per_call} for f in figures]
        args.json.write_text(
            json.dumps(
                {
                    "figures": figures_json,
                    "records": outcome.records,
                    "calls_made": outcome.calls_made,
                },
                indent=2,
            )
        )
    if args.write:
        write_section(args.write, report, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
