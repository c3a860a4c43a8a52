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
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compare import (
    Config,
    Outcome,
    Run,
    free_port,
    latency_against,
    paced,
    parse_wrk,
    problems,
    render,
    render_latency,
    render_paced,
    reproduce,
    startup_only,
    write_section,
)
from benchmarks.stub import LEDGER, create_stub_app

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
PATH = "/v1beta/models/gemini-2.5-flash"

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"),
    reason="Debian's wrk is not installed (scripts/test.sh installs it)",
)


needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None and not os.environ.get("CI"),
    reason="Debian's valgrind is not installed (scripts/test.sh installs it)",
)


def run_harness(
    tmp_path: Path, script: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``benchmarks/<script>`` with ``args`` and ``--json``: its output and its figures."""
    out = tmp_path / f"{script}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done, json.loads(out.read_text())


@needs_valgrind
def test_instruction_counts_cover_each_call_kind_and_the_meter_records_every_call(
    tmp_path: Path,
):
    done, result = run_harness(
        tmp_path,
        "instructions.py",
        *("--targets", "direct", "meter"),
        *("--calls", "5", "--warmup", "5", "--settle", "1"),
    )

    figures = {(f["target"], f["kind"]): f for f in result["figures"]}
    assert set(figures) == {(t, k) for t in ("direct", "meter") for k in ("plain", "streamed")}
    assert all(f["calls"] == 5 for f in figures.values())
    # The meter answers as a server and calls the stub as a client, and meters on top: a count
    # at or below the stub's own would mean the legs were not counted at all.
    for kind in ("plain", "streamed"):
        assert figures[("meter", kind)]["per_call"] > figures[("direct", kind)]["per_call"] > 0
    # 5 warm-up and 5 counted calls of each kind, made by the harness, each one record
    assert result["calls_made"] == 20
    assert result["records"] == 20
    assert "| Gemini Meter |" in done.stdout
    assert "python benchmarks/instructions.py --targets direct meter" in done.stdout


@needs_valgrind
def test_each_step_is_counted_alone_above_the_loops_own_floor(tmp_path: Path):
    done, result = run_harness(
        tmp_path, "parts.py", *("--parts", "nothing", "price", "strict_json"), *("--calls", "20")
    )
    counted = result["per_call"]

    assert list(counted) == ["nothing", "price", "strict_json"]
    # A call of a function doing nothing costs a few hundred instructions; pricing a record
    # or reading a JSON body costs thousands more: a step not run at all would count as
    # the floor, and one counted with the child's start-up would count millions.
    assert 0 < counted["nothing"] < 5_000
    for step in ("price", "strict_json"):
        assert 10 * counted["nothing"] < counted[step] < 1_000_000
    assert "| price |" in done.stdout
    assert "python benchmarks/parts.py --parts nothing price strict_json --calls 20" in done.stdout


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
        for leg in (
            "direct",
            "bare forwarder",
            "lean forwarder",
            "lean forwarder + uvloop",
            "Gemini Meter",
        )
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
    probed, interactions = result["first_bytes"], result["interaction_first_bytes"]
    forwarders = {"bare forwarder", "lean forwarder", "lean forwarder + uvloop"}
    assert set(probed) == set(interactions) == {"direct", "Gemini Meter", *forwarders}
    assert all(
        p["calls"] > 0 and p["p50_ms"] > 0 for p in [*probed.values(), *interactions.values()]
    )

    def by_probes(name: str) -> int:
        return int(probed[name]["calls"] + interactions[name]["calls"])

    # no warm-up in a smoke run: wrk's responses and both first-byte probes' calls; each
    # streamed interaction is one record too
    assert meters["Gemini Meter"]["answered"] == served_by_wrk + by_probes("Gemini Meter")
    assert meters["Gemini Meter"]["received"] >= served_by_wrk
    assert meters["Gemini Meter (memory scenarios)"]["answered"] == 50 + 1
    assert result["lost"] == dict.fromkeys(meters, 0)
    # The forwarders keep no records; what they relayed reached the stub with their client's key
    # (at least every response wrk read in full; wrk may leave a call unread at its end).
    for name in forwarders:
        p = result["processes"][name]
        relayed = sum(r["requests"] for r in runs if r["leg"] == name) + by_probes(name)
        assert "records" not in p and p["answered"] == relayed, name
        assert p["received"] >= relayed, name

    held, big = result["memory"]["held"], result["memory"]["big"]
    assert held["completed"] == held["streams"] == 50
    assert big["completed"] == 1
    assert big["meter_bytes"] == big["direct_bytes"] > 4 * 2**20
    assert all(result["memory"][s]["rss_peak_mib"] > 0 for s in ("held", "big"))

    assert "| plain | 1 | Gemini Meter |" in done.stdout
    assert "The same for streamed interactions" in done.stdout
    assert "Reproduce: `python benchmarks/compare.py --smoke`" in done.stdout


def _other_copy(tmp_path: Path) -> tuple[Path, Path]:
    """Another copy of this checkout's package and migrations, whose serve command (loaded by
    every command, `keys create` too) leaves a mark in the file returned second."""
    copy = tmp_path / "old"
    shutil.copytree(ROOT / "proxy", copy / "proxy")
    shutil.copytree(ROOT / "migrations", copy / "migrations")
    marks = tmp_path / "marks"
    with (copy / "proxy" / "cli" / "serve.py").open("a") as serve:
        serve.write(f"\nopen({str(marks)!r}, 'a').write('old ')\n")
    return copy, marks


def _brief(starts: int) -> Config:
    return Config(
        seconds=1,
        reps=1,
        concurrency=[1],
        litellm=False,
        warmup=0,
        streams=1,
        big_bytes=2**20,
        held_chunks=1,
        held_delay_ms=10,
        starts=starts,
        serve_args=[],
        smoke=True,
    )


def test_startup_against_another_copy_interleaves_launches_of_that_copy(tmp_path: Path):
    copy, marks = _other_copy(tmp_path)
    mine, theirs = startup_only(_brief(starts=2), copy)
    assert len(mine) == len(theirs) == 2
    assert all(wall > 0 and cpu > 0 for wall, cpu in mine + theirs)
    # The run's key is made by this copy; each launch of the other copy loads its serve.py.
    assert marks.read_text() == "old old "


@needs_wrk
def test_latency_against_another_copy_runs_both_meters_and_direct_calls(tmp_path: Path):
    copy, marks = _other_copy(tmp_path)
    brief = replace(_brief(starts=0), concurrency=[1, 4], probe_seconds=0.5)
    runs, first, interactions = latency_against(brief, copy)
    other = f"`{copy}`"
    assert sorted((r.leg, r.stream, r.concurrency) for r in runs) == sorted(
        (leg, stream, c)
        for leg in ("direct", "this copy", other)
        for stream in (False, True)
        for c in (1, 4)
    )
    assert all(r.ok > 0 and r.errors == 0 for r in runs)
    # The other copy ran both its commands: `keys create` (its own database) and `serve`.
    assert marks.read_text() == "old old "
    # CPU per call is read for each meter's process, and the stub's for direct calls; of a
    # meter's, its event loop's thread spends part (the journal's and writer's the rest).
    assert all((r.proxy_cpu_s if r.leg != "direct" else r.stub_cpu_s) > 0 for r in runs)
    meters = [r for r in runs if r.leg != "direct"]
    assert all(0 < r.proxy_loop_cpu_s <= r.proxy_cpu_s for r in meters)
    # Each target's streamed calls, generateContent's and interactions', timed to their
    # first byte, once per repetition.
    for probed in (first, interactions):
        assert sorted(probed) == sorted(("direct", "this copy", other))
        assert all(len(reps) == 1 and reps[0] and min(reps[0]) > 0 for reps in probed.values())
    table = render_latency(runs, first, interactions)
    assert f"| {other} | streamed | 4 |" in table and "| direct | plain | 1 |" in table
    assert "| c | req/s |" in table and "| CPU ms per call | of which the loop's thread |" in table
    assert table.count("| target | calls | p50 ms | p99 ms | added p50 ms |") == 2
    assert "first byte of a streamed interaction" in table
    assert f"| {other} | {len(first[other][0])} |" in table
    assert f"| {other} | {len(interactions[other][0])} |" in table


async def test_paced_calls_time_each_target_at_each_pause_one_call_at_a_time():
    results = await paced(replace(_brief(starts=0), reps=2, probe_seconds=0.3), [0, 20])
    targets = ("direct", "bare forwarder", "lean forwarder + uvloop", "Gemini Meter")
    assert sorted((r.leg, r.stream, r.pause_ms, r.rep) for r in results) == sorted(
        (leg, stream, pause, rep)
        for leg in targets
        for stream in (False, True)
        for pause in (0, 20)
        for rep in (0, 1)
    )
    assert all(r.times_ms and min(r.times_ms) > 0 for r in results)
    # Each call starts 20 ms or more after the last one ended: in 0.3 s, 15 at most.
    assert all(len(r.times_ms) <= 15 for r in results if r.pause_ms == 20)
    # CPU is read for each proxy's process, and for direct calls the stub's.
    for leg in ("direct", "Gemini Meter"):
        assert sum(r.cpu_s for r in results if r.leg == leg) > 0
    table = render_paced(results)
    assert "| 20 | streamed | Gemini Meter |" in table and "| 0 | plain | direct |" in table
    assert "| added p50 ms | added p99 ms | CPU ms per call |" in table


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


def _outcome() -> Outcome:
    """One repetition of plain calls at c=1 with hand-picked figures, and what follows them."""
    config = Config(
        seconds=1,
        reps=1,
        concurrency=[1],
        litellm=True,
        warmup=0,
        streams=1000,
        big_bytes=100 * 2**20,
        held_chunks=20,
        held_delay_ms=250,
        starts=2,
        serve_args=[],
        smoke=False,
    )
    outcome = Outcome(config, load=[1.0, 1.0])
    for stream in (False, True):
        # (leg, responses in 1 s, p50 ms, p99 ms, the proxy's CPU s, the stub's CPU s)
        for leg, calls, p50, p99, proxy_cpu, stub_cpu in (
            ("direct", 1000, 0.1, 0.5, 0.0, 0.1),
            ("bare forwarder", 800, 0.3, 1.0, 0.04, 0.08),
            ("lean forwarder", 900, 0.2, 0.9, 0.018, 0.09),
            ("lean forwarder + uvloop", 1000, 0.15, 0.7, 0.015, 0.1),
            ("Gemini Meter", 500, 0.6, 2.5, 0.1, 0.05),
            ("LiteLLM", 50, 10.1, 20.5, 0.5, 0.005),
        ):
            outcome.runs.append(
                Run(leg, stream, 1, 0, calls, 0, 0, 1.0, p50, p99, proxy_cpu, stub_cpu)
            )
    outcome.first_bytes = {
        "direct": [[1.0, 1.0, 2.0]],
        "Gemini Meter": [[2.0, 2.0, 6.0]],
        "lean forwarder": [[1.5, 1.0, 3.0]],
        "LiteLLM": [[21.0, 21.0, 42.0]],
    }
    outcome.interaction_first_bytes = {
        "direct": [[1.0, 1.5, 2.0]],
        "Gemini Meter": [[2.5, 3.5, 9.0]],
    }
    outcome.processes = {
        "direct": {"start_s": 0.2, "start_cpu_s": 0.1, "rss_mib": 40.0},
        "bare forwarder": {
            "start_s": 0.2,
            "start_cpu_s": 0.1,
            "rss_mib": 38.0,
            "answered": 800,
            "received": 800,
        },
        "lean forwarder + uvloop": {
            "start_s": 0.1,
            "start_cpu_s": 0.05,
            "rss_mib": 21.0,
            "answered": 1000,
            "received": 1001,
        },
        "Gemini Meter": {
            "start_s": 0.4,
            "start_cpu_s": 0.3,
            "rss_mib": 90.0,
            "answered": 1000,
            "received": 1002,
            "records": 1001,
        },
    }
    outcome.starts = [(0.4, 0.3), (0.6, 0.5)]
    return outcome


def test_the_report_puts_each_proxy_against_direct_calls_and_against_each_other():
    report = render(_outcome(), "python benchmarks/compare.py")
    # Per call: the meter 0.1 s / 500 = 0.2 ms against the stub's 0.1 s / 1000 = 0.1 ms;
    # LiteLLM 0.5 s / 50 = 10 ms. Added: 0.6 - 0.1 and 2.5 - 0.5; 10.1 - 0.1 and 20.5 - 0.5.
    assert "| plain | 1 | Gemini Meter | 500 | 0.60 | 2.50 | 0.50 | 2.00 | 0.200 | 0 |" in report
    assert "| plain | 1 | LiteLLM | 50 | 10.10 | 20.50 | 10.00 | 20.00 | 10.000 | 0 |" in report
    # The lean forwarders: 0.018 s / 900 = 0.02 ms, added 0.2 - 0.1 and 0.9 - 0.5; on uvloop
    # 0.015 s / 1000 = 0.015 ms, added 0.15 - 0.1 and 0.7 - 0.5.
    assert "| plain | 1 | lean forwarder | 900 | 0.20 | 0.90 | 0.10 | 0.40 | 0.020 | 0 |" in report
    assert (
        "| plain | 1 | lean forwarder + uvloop | 1000 | 0.15 | 0.70 | 0.05 | 0.20 | 0.015 | 0 |"
        in report
    )
    # rate 500/1000, CPU 0.2/0.1, the bare forwarder's 0.04 s / 800 = 0.05 ms against the
    # stub's 0.1, the lean ones' 0.02 and 0.015 against it too, the meter's 0.2 against the
    # bare one's, LiteLLM CPU 10/0.2, rate 500/50, added 10/0.5 and 20/2
    assert (
        "| plain | 1 | 0.50× | 2.00× | 0.50× | 0.20× | 0.15× | 4.00× | 50× | 10× | 20× | 10× |"
        in report
    )
    assert (
        "| streamed | 1 | 0.50× | 2.00× | 0.50× | 0.20× | 0.15× | 4.00× | 50× | 10× | 20× | 10× |"
        in report
    )
    # the forwarders keep no records: none owed, none lost
    assert "| bare forwarder | 0.20 | 0.10 | 38 | 800 | 800 | – | – |" in report
    assert "| lean forwarder + uvloop | 0.10 | 0.05 | 21 | 1000 | 1001 | – | – |" in report
    # First bytes, nearest rank of three: p50 the 2nd, p99 the 3rd; only LiteLLM is put
    # against the meter (added 20 / 1 and 40 / 4), a forwarder is not.
    assert "| direct | 3 | 1.00 | 2.00 | – | – | – | – |" in report
    assert "| lean forwarder | 3 | 1.50 | 3.00 | 0.50 | 1.00 | – | – |" in report
    assert "| Gemini Meter | 3 | 2.00 | 6.00 | 1.00 | 4.00 | – | – |" in report
    assert "| LiteLLM | 3 | 21.00 | 42.00 | 20.00 | 40.00 | 20× | 10× |" in report
    # Streamed interactions, a table of their own: p50 1.5 and 3.5, p99 2 and 9.
    interactions = report[report.index("The same for streamed interactions") :]
    assert "| Gemini Meter | 3 | 3.50 | 9.00 | 2.00 | 7.00 |" in interactions
    assert "| direct | 3 | 1.50 | 2.00 | – | – |" in interactions
    # 1002 calls reached the stub, 1001 records: one lost.
    assert "| Gemini Meter | 0.40 | 0.30 | 90 | 1000 | 1002 | 1001 | 1 |" in report
    assert "median 0.50 s (min 0.40, max 0.60; target: under 0.5 s), of which CPU 0.40 s" in report


def test_a_lost_record_fails_the_run_and_says_which_meter():
    outcome = _outcome()
    assert problems(outcome) == [
        "Gemini Meter: 1 calls received upstream without a record (or records without a call)"
    ]
    outcome.processes["Gemini Meter"]["records"] = 1002
    assert problems(outcome) == []


def test_the_budget_benchmark_measures_both_steps_on_both_databases():
    # A small window: the run completes, fills the table to the count asked, and reports a
    # refresh and an alert pass for each database (the pass without a threshold reached:
    # the harness itself refuses a run that alerted).
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_budgets.py", "--records", "3000", "--reps", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [
        line for line in done.stdout.splitlines() if line.startswith(("| sqlite", "| postgresql"))
    ]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| sqlite", "refresh"],
        ["| sqlite", "alert pass"],
        ["| postgresql", "refresh"],
        ["| postgresql", "alert pass"],
    ]
    assert "holds 3,000 records" in done.stdout


def test_a_free_port_is_below_the_ephemeral_range_and_free():
    # A service under callgrind binds its port seconds after it was picked: a port from
    # the kernel's ephemeral range could meanwhile go to any connection on the machine.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports)
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # raises if it was not free
