"""Optional OTLP export of the OpenTelemetry GenAI client metrics.

For teams that run an OpenTelemetry collector rather than Prometheus. With
``GEMINI_METER_OTLP_ENDPOINT`` set (and the ``otel`` extra installed), every
finished record is also recorded, through the OpenTelemetry SDK's
``MeterProvider``, as the GenAI semantic conventions' client metrics:

- ``gen_ai.client.token.usage`` (histogram, ``{token}``): one point per call and
  ``gen_ai.token.type``: ``input`` = input + intermediate (cached is already part
  of input), ``output`` = output + thinking;
- ``gen_ai.client.operation.duration`` (histogram, ``s``), with ``error.type``
  set to the upstream's status code on an error.

Both carry ``gen_ai.provider.name`` = ``gcp.gemini``, ``gen_ai.operation.name``
and ``gen_ai.request.model`` (the same bounded model label as ``/metrics``). A
periodic reader exports them over OTLP/HTTP (protobuf) from its own thread every
``otlp_interval_seconds``: the request path only adds to in-memory aggregates.
``docs/metrics.md`` has the mapping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..errors import ConfigError
from ..metering.records import EndpointKind, UsageRecord
from .typedefs import metrics_key, settings_key

__all__ = ["OtelExport", "operation_name", "otel_ctx"]

PROVIDER = "gcp.gemini"

_OPERATIONS = {
    EndpointKind.GENERATE_CONTENT: "generate_content",
    EndpointKind.STREAM_GENERATE_CONTENT: "generate_content",
    EndpointKind.INTERACTION_CREATE: "generate_content",
    EndpointKind.INTERACTION_GET: "generate_content",
    EndpointKind.EMBED_CONTENT: "embeddings",
    EndpointKind.BATCH_EMBED_CONTENTS: "embeddings",
    EndpointKind.OPENAI_CHAT_COMPLETIONS: "chat",
    EndpointKind.OPENAI_EMBEDDINGS: "embeddings",
}


def operation_name(endpoint: EndpointKind) -> str:
    """``gen_ai.operation.name`` for an endpoint kind (its own value when none fits)."""
    return _OPERATIONS.get(endpoint, endpoint.value)


class OtelExport:
    """The GenAI client metrics, recorded per finished record and exported over OTLP/HTTP."""

    def __init__(self, endpoint: str, interval_seconds: float, model_label: Any) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:
            raise ConfigError(
                "GEMINI_METER_OTLP_ENDPOINT needs the OpenTelemetry SDK: install gemini-meter[otel]"
            ) from exc
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint.rstrip("/") + "/v1/metrics"),
            export_interval_millis=interval_seconds * 1000,
        )
        # A provider of our own, never the process-wide one: each app exports alone.
        self._provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "gemini-meter"}),
            shutdown_on_exit=False,  # the app's cleanup shuts it down
        )
        meter = self._provider.get_meter("gemini_meter")
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
        )
        self._model_label = model_label

    def observe(self, record: UsageRecord) -> None:
        """Record one finished (non-provisional) record; never blocks on the network."""
        if record.unmetered_route:
            return
        attributes = {
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.operation.name": operation_name(record.endpoint),
            "gen_ai.request.model": self._model_label(record.model),
        }
        duration = dict(attributes)
        if record.upstream_status >= 400:
            duration["error.type"] = str(record.upstream_status)
        self._duration.record(record.latency_seconds, duration)
        if record.upstream_status >= 400:
            return
        usage = record.usage
        self._tokens.record(
            usage.input_tokens + usage.intermediate_tokens,
            {**attributes, "gen_ai.token.type": "input"},
        )
        self._tokens.record(
            usage.output_tokens + usage.thinking_tokens,
            {**attributes, "gen_ai.token.type": "output"},
        )

    def shutdown(self) -> None:
        """Export what is left and stop (blocking: run it off the event loop)."""
        self._provider.shutdown()


async def otel_ctx(app: web.Application) -> AsyncIterator[None]:
    """The OTLP export, when ``otlp_endpoint`` is set; flushed at shutdown."""
    settings = app[settings_key]
    if settings.otlp_endpoint is None:
        yield
        return
    metrics = app[metrics_key]
    export = OtelExport(settings.otlp_endpoint, settings.otlp_interval_seconds, metrics.model_label)
    metrics.listeners.append(export.observe)
    yield
    metrics.listeners.remove(export.observe)
    await asyncio.to_thread(export.shutdown)
