"""The optional OTLP export: the OpenTelemetry SDK's exporter posts to a collector
stand-in on loopback, which decodes the protobuf request (opentelemetry-proto) and
sums the GenAI token histograms; they must equal the database's totals."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from google.genai import types
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from tests.factories import StackFactory

MODEL = "gemini-2.5-flash"


def points(request: Any, name: str) -> list[tuple[dict[str, str], float, int]]:
    """(attributes, sum, count) of every histogram point of ``name`` in one export."""
    found = []
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.histogram.data_points:
                    attributes = {a.key: a.value.string_value for a in point.attributes}
                    found.append((attributes, point.sum, point.count))
    return found


async def test_genai_token_usage_reaches_an_otlp_collector(
    make_stack: StackFactory, aiohttp_server: Any
):
    exports: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await request.read())
        exports.append(message)
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    collector = web.Application()
    collector.router.add_post("/v1/metrics", receive)
    server = await aiohttp_server(collector)
    stack = await make_stack(
        otlp_endpoint=str(server.make_url("")).rstrip("/"), otlp_interval_seconds=0.1
    )
    client = stack.sdk("alice")
    await client.aio.models.generate_content(model=MODEL, contents="Count these tokens, please.")
    await client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents="Metrics count every token.",
        config=types.EmbedContentConfig(output_dimensionality=4),
    )
    records = await stack.records()
    want_input = sum(r["input_tokens"] + r["intermediate_tokens"] for r in records)
    want_output = sum(r["output_tokens"] + r["thinking_tokens"] for r in records)
    assert want_input > 0 and want_output > 0

    def sums() -> tuple[float, float, int]:
        if not exports:
            return (0, 0, 0)
        # cumulative temporality: the latest export holds the totals
        last = exports[-1]
        tokens = points(last, "gen_ai.client.token.usage")
        by_type = {"input": 0.0, "output": 0.0}
        for attributes, total, _ in tokens:
            by_type[attributes["gen_ai.token.type"]] += total
        calls = sum(n for _, _, n in points(last, "gen_ai.client.operation.duration"))
        return (by_type["input"], by_type["output"], calls)

    for _ in range(200):
        if sums() == (want_input, want_output, len(records)):
            break
        await asyncio.sleep(0.05)
    assert sums() == (want_input, want_output, len(records))

    tokens = points(exports[-1], "gen_ai.client.token.usage")
    assert {a["gen_ai.provider.name"] for a, _, _ in tokens} == {"gcp.gemini"}
    assert {(a["gen_ai.request.model"], a["gen_ai.operation.name"]) for a, _, _ in tokens} == {
        (MODEL, "generate_content"),
        ("gemini-embedding-001", "embeddings"),
    }
