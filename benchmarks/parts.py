"""Instructions per call of the meter's own steps, each counted alone: where a call's work goes.

``instructions.py`` counts whole calls through a running meter. This counts the pure steps a
metered ``generateContent`` call takes on the event loop, one at a time, on the benchmark's
own request body (``compare.BODY``) and the stub's answer (``stub.build_replies``), under
valgrind's callgrind. One child process (``PYTHONHASHSEED`` fixed) imports and warms every
step, then counting is switched on; each step runs ``BASE_CALLS`` times, then ``BASE_CALLS +
--calls`` times, with a dump after each run, and the difference of the two dumps over
``--calls`` is its count per call (what a run costs besides its calls cancels out). The
same count for the same code whatever the machine's load, so a change to one step shows in
seconds, to within about a hundred instructions; ``nothing`` (a call of a function that
does nothing) is the loop's own floor, included in every row.

What it leaves out: the server and client (aiohttp, the upstream client, the sockets), the
writer's and journal's threads, the awaits. A whole call's count is ``instructions.py``'s.

    python benchmarks/parts.py                          # every step, 5,000 calls each
    python benchmarks/parts.py --parts price strict_json --calls 2000
    PYTHONPATH=DIR python benchmarks/parts.py           # another copy's proxy package

Needs valgrind (Debian's package: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

# Appended, not first: a PYTHONPATH given for another copy of the proxy package still wins.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import BODY, MODEL, compile_bytecode, write_section  # noqa: E402
from benchmarks.instructions import callgrind, control, dumped_instructions  # noqa: E402

SECTION: Final = "benchmarks/parts.py"
# The shorter of a step's two runs: what a run costs besides its calls (the command read,
# the answer written) is in both, and cancels out.
BASE_CALLS: Final = 50
PARTS: Final = (
    "nothing",
    "path_problem + classify",
    "strict_json",
    "request_meta",
    "references",
    "summarize_generate",
    "price",
    "UsageRecord",
    "usage_row + encode_frame",
    "Metrics.observe",
)


def steps() -> dict[str, Callable[[], object]]:
    """Each step as a call without arguments, on the inputs of one benchmark call."""
    from multidict import MultiDict, MultiDictProxy
    from prometheus_client import CollectorRegistry

    from benchmarks.stub import build_replies
    from proxy.metering.parsers import parse_json, summarize_generate
    from proxy.metering.records import EndpointKind, Principal, UsageRecord, new_request_id
    from proxy.pricing import load_catalog, price
    from proxy.server.metrics import build_metrics
    from proxy.server.references import references
    from proxy.server.routes import classify, path_problem, request_meta, strict_json
    from proxy.storage.journal import USAGE, encode_frame
    from proxy.storage.writes import usage_row

    path = f"/v1beta/models/{MODEL}:generateContent"
    body = BODY.encode()
    query = MultiDictProxy(MultiDict[str]())
    catalog = load_catalog()
    answer = build_replies(3, 64, 10).plain
    route = classify("POST", path)
    parsed = strict_json(body)
    usage = summarize_generate(parse_json(answer)).usage
    assert usage is not None
    principal = Principal(user_id=1, user_name="bench", team_id=None, team_name=None, key_id=1)
    metrics = build_metrics(CollectorRegistry(), resolve_model=catalog.resolve)

    def record() -> UsageRecord:
        return UsageRecord(
            request_id=new_request_id(),
            created_at=datetime.now(UTC),
            principal=principal,
            model=MODEL,
            endpoint=EndpointKind.GENERATE_CONTENT,
            streamed=False,
            upstream_status=200,
            latency_seconds=0.001,
            ttfb_seconds=0.0005,
            upstream_seconds=0.0004,
            usage=usage,
        )

    priced = record()
    priced.cost = price(catalog, MODEL, usage, at=priced.created_at)
    return {
        "nothing": lambda: None,
        "path_problem + classify": lambda: (path_problem(path), classify("POST", path)),
        "strict_json": lambda: strict_json(body),
        "request_meta": lambda: request_meta(route, parsed),
        "references": lambda: references(parsed, query),
        "summarize_generate": lambda: summarize_generate(parse_json(answer)),
        "price": lambda: price(catalog, MODEL, usage, at=priced.created_at),
        "UsageRecord": record,
        "usage_row + encode_frame": lambda: encode_frame(USAGE, usage_row(priced)),
        "Metrics.observe": lambda: metrics.observe(priced),
    }


def serve_steps() -> None:
    """The child, under callgrind: warms every step, says ``ready``, then runs ``NAME CALLS``
    lines from its input, answering ``done`` after each."""
    import gc

    table = steps()
    for step in table.values():
        step()
    gc.freeze()  # as serve does: the collector walks what the calls make, not the imports
    print("ready", flush=True)
    for line in sys.stdin:
        name, calls = line.rsplit(" ", 1)
        step = table[name]
        for _ in range(int(calls)):
            step()
        print("done", flush=True)


def measure(names: Sequence[str], calls: int) -> dict[str, float]:
    """Each step's instructions per call: one child under callgrind, counting switched on
    after its start-up, a dump after each run of a step (``BASE_CALLS``, then
    ``BASE_CALLS + calls`` calls), the difference of the two over ``calls``."""
    with tempfile.TemporaryDirectory(prefix="gemini-meter-parts-") as tmp:
        out = Path(tmp) / "parts.callgrind"
        command = [*callgrind(out), sys.executable, __file__, "--serve"]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        child = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the steps' process did not start")
            control(child.pid, "-i", "on")
            counted: dict[str, float] = {}
            for name in names:
                totals = []
                for n in (BASE_CALLS, BASE_CALLS + calls):
                    child.stdin.write(f"{name} {n}\n")
                    child.stdin.flush()
                    if child.stdout.readline().strip() != "done":
                        raise RuntimeError(f"{name}: the steps' process stopped")
                    control(child.pid, "--dump")
                    totals.append(dumped_instructions(out))
                counted[name] = (totals[1] - totals[0]) / calls
            return counted
        finally:
            child.stdin.close()
            child.wait(timeout=300)


def render(counted: dict[str, float], calls: int, command: str) -> str:
    day = datetime.now(UTC).date().isoformat()
    lines = [
        "## The meter's steps, counted one at a time (callgrind)",
        "",
        f"User-space instructions per call of each step alone, {calls:,} calls each (the"
        f" difference of two runs), {day}, {platform.machine()}, Python"
        f" {platform.python_version()}; the same count whatever the machine's load.",
        "",
        f"    {command}",
        "",
        "| step | k instructions per call |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value / 1000:,.1f} |" for name, value in counted.items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--calls", type=int, default=5000, help="calls counted of each step")
    p.add_argument("--write", type=Path, help="update this harness's section of the file")
    p.add_argument("--json", type=Path, help="also write the counts as JSON here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_steps()
        return 0
    compile_bytecode()
    counted = measure(args.parts, args.calls)
    shown = " ".join(
        ["python benchmarks/parts.py"]
        + (["--parts", *args.parts] if list(args.parts) != list(PARTS) else [])
        + (["--calls", str(args.calls)] if args.calls != 5000 else [])
    )
    text = render(counted, args.calls, shown)
    print(text)
    if args.json:
        result: dict[str, Any] = {"calls": args.calls, "per_call": counted}
        args.json.write_text(json.dumps(result, indent=2))
    if args.write:
        write_section(args.write, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
