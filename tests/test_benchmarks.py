"""The benchmark harness (``benchmarks/compare.py``) and its upstream stub.

The benchmark itself is not part of the suite: its figures need a quiet machine. Its smoke
run is: a few seconds of every wrk leg and both memory scenarios, without LiteLLM,
checking only that it completes and that Gemini Meter stored one record for every call the
stub received with its upstream key. No assertion here depends on a timing.

The smoke run needs Debian's ``wrk``; ``scripts/test.sh`` installs it. In CI a missing wrk
fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compare import parse_wrk, reproduce, write_section
from benchmarks.stub import LEDGER, create_stub_app

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
PATH = "/v1beta/models/gemini-2.5-flash"

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"),
    reason="Debian's wrk is not installed (scripts/test.sh installs it)",
)


@needs_wrk
def test_the_smoke_run_completes_and_every_call_received_upstream_is_recorded(tmp_path: Path):
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())

    assert result["skipped"] == ["LiteLLM"]
    runs = result["runs"]
    assert {(r["leg"], r["stream"], r["concurrency"]) for r in runs} == {
        (leg, stream, c)
        for leg in ("direct", "Gemini Meter")
        for stream in (False, True)
        for c in (1, 50)
    }
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in runs)

    # The stub's ledger is the outside count: every call it received with a meter's
    # upstream key is one record in that meter's database after a graceful stop.
    meters = {name: p for name, p in result["processes"].items() if "records" in p}
    assert set(meters) == {"Gemini Meter", "Gemini Meter (memory scenarios)"}
    for name, p in meters.items():
        assert p["received"] > 0, name
        assert p["records"] == p["received"], name
    served_by_wrk = sum(r["requests"] for r in runs if r["leg"] == "Gemini Meter")
    probed = result["first_bytes"]
    assert set(probed) == {"direct", "Gemini Meter"}
    assert all(p["calls"] > 0 and p["p50_ms"] > 0 for p in probed.values())
    # no warm-up in a smoke run: wrk's responses and the first-byte probe's calls
    assert meters["Gemini Meter"]["answered"] == served_by_wrk + probed["Gemini Meter"]["calls"]
    assert meters["Gemini Meter"]["received"] >= served_by_wrk
    assert meters["Gemini Meter (memory scenarios)"]["answered"] == 50 + 1
    assert result["lost"] == dict.fromkeys(meters, 0)

    held, big = result["memory"]["held"], result["memory"]["big"]
    assert held["completed"] == held["streams"] == 50
    assert big["completed"] == 1
    assert big["meter_bytes"] == big["direct_bytes"] > 4 * 2**20
    assert all(result["memory"][s]["rss_peak_mib"] > 0 for s in ("held", "big"))

    assert "| plain | 1 | Gemini Meter |" in done.stdout
    assert "Reproduce: `python benchmarks/compare.py --smoke`" in done.stdout


def test_a_write_replaces_its_own_section_and_keeps_the_others(tmp_path: Path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nIntro.\n")
    write_section(doc, "old figures\n")
    begin, end = "<!-- benchmarks/compare.py: begin -->", "<!-- benchmarks/compare.py: end -->"
    assert doc.read_text() == f"# Benchmarks\n\nIntro.\n\n{begin}\nold figures\n{end}\n"

    # Another harness's section, and prose after ours: both stay as they are.
    doc.write_text(doc.read_text() + "\n## The journal\n\nKept.\n")
    write_section(doc, "journal figures", name="benchmarks/bench_proxy.py --journal")
    write_section(doc, "new figures")
    assert doc.read_text() == (
        f"# Benchmarks\n\nIntro.\n\n{begin}\nnew figures\n{end}\n\n## The journal\n\nKept.\n"
        "\n<!-- benchmarks/bench_proxy.py --journal: begin -->\njournal figures\n"
        "<!-- benchmarks/bench_proxy.py --journal: end -->\n"
    )


def test_the_reproduce_line_leaves_out_the_json_file_and_the_label():
    assert reproduce(["--reps", "3", "--json", "/tmp/x.json", "--write", "docs/benchmarks.md"]) == (
        "python benchmarks/compare.py --reps 3 --write docs/benchmarks.md"
    )
    assert reproduce(["--json=/tmp/x.json", "--preliminary", "--serve-args", "--workers 2"]) == (
        "python benchmarks/compare.py --serve-args '--workers 2'"
    )


def test_the_wrk_summary_line_is_read_among_wrks_own_report():
    output = (
        "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 1 connections\n"
        'WRK_JSON {"requests": 120, "duration_us": 1000000, "p50_us": 250, "p99_us": 900,'
        ' "status": 2}\n'
    )
    assert parse_wrk(output) == {
        "requests": 120.0,
        "duration_us": 1_000_000.0,
        "p50_us": 250.0,
        "p99_us": 900.0,
        "status": 2.0,
    }
    with pytest.raises(RuntimeError, match="no summary"):
        parse_wrk("wrk: connection refused\n")


async def test_the_stub_counts_calls_per_key_and_a_stream_left_early_as_cut(aiohttp_client: Any):
    client = await aiohttp_client(
        create_stub_app(big_bytes=3 * 64 * 1024, held_chunks=200, held_delay_ms=10)
    )
    ledger = client.app[LEDGER]

    async with client.post(f"{PATH}:generateContent", data=BODY) as response:
        assert response.status == 401  # no key: not a call
    async with client.post(f"{PATH}:generateContent?key=a", data=BODY) as response:
        assert (await response.json())["usageMetadata"]["totalTokenCount"] == 25
    headers = {"x-goog-api-key": "b"}
    async with client.post(
        f"{PATH}:streamGenerateContent?alt=sse&bench=big", data=BODY, headers=headers
    ) as response:
        events = (await response.read()).split(b"\r\n\r\n")
    assert len(events) == 4 and events[-1] == b""  # three events of 64 KiB each
    assert all(len(e) > 64 * 1024 for e in events[:3])
    assert b'"finishReason":"STOP"' in events[2] and b"finishReason" not in events[0]
    async with client.post(f"{PATH}:streamGenerateContent?key=b", data=BODY) as response:
        assert len(await response.json()) == 3  # the JSON-array framing

    # A held stream whose client leaves after its first event: received, cut, not served.
    response = await client.post(
        f"{PATH}:streamGenerateContent?alt=sse&bench=held&key=c", data=BODY
    )
    await response.content.readuntil(b"\r\n\r\n")
    response.close()
    async with asyncio.timeout(30):
        while not ledger.cut["c"]:
            await asyncio.sleep(0.01)

    assert ledger.received == {"a": 1, "b": 2, "c": 1}
    assert ledger.served == {"a": 1, "b": 2}
    assert ledger.cut == {"c": 1}
    async with client.get("/_stub/stats") as response:
        stats = await response.json()
    assert stats["received"] == {"a": 1, "b": 2, "c": 1}
    assert stats["peak_streams"] == 1
