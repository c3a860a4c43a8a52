"""The recorder counts a record in the metrics once the response it describes is on its
way: the handler writes that response in the same turn of the loop as ``finish``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from proxy.metering.recorder import Recorder
from proxy.metering.records import Principal, Usage
from proxy.pricing import load_catalog
from proxy.server.metrics import build_metrics
from proxy.storage.writer import UsageWriter

ALICE = Principal(user_id=1, user_name="alice", team_id=2, team_name="research")


def _counted(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_metrics_are_counted_at_the_loops_next_turn(sessionmaker, make_record):
    registry = CollectorRegistry()
    writer = UsageWriter(sessionmaker)  # never started: the rows only queue
    recorder = Recorder(load_catalog(None), writer, build_metrics(registry))
    record = make_record(
        ALICE, usage=Usage(input_tokens=1_000, output_tokens=200, total_tokens=1_200)
    )
    requests = {
        "model": "gemini-2.5-flash",
        "endpoint": "generate_content",
        "status_class": "2xx",
        "streamed": "false",
        "principal": "research",
    }
    output = {"type": "output", "model": "gemini-2.5-flash", "principal": "research"}

    assert recorder.finish(record)
    # priced and queued at once; not counted yet
    assert record.cost.total is not None
    assert writer.queued == 1
    assert _counted(registry, "gemini_meter_requests_total", **requests) == 0

    await asyncio.sleep(0)
    assert _counted(registry, "gemini_meter_requests_total", **requests) == 1
    assert _counted(registry, "gemini_meter_tokens_total", **output) == 200
