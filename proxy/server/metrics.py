"""Prometheus metrics, one registry per app (tests build their own).

Label values are bounded: ``endpoint`` is an ``EndpointKind`` value,
``status_class`` one of ``2xx``..``5xx``, ``type`` one of the five token
categories, ``category`` one of the cost split's six parts, ``route`` the
kind of a row of ``server.routes.UNMETERED_ROUTES``, ``reason`` one of
``unknown_upload`` and ``busy``. No user, key or model name is a label here;
per-user figures come from the database.

The journal's figures (``gemini_meter_journal_*``) are read from the
``storage.journal.Journal`` at scrape time by ``watch_journal``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metering.records import UsageRecord

if TYPE_CHECKING:
    from ..storage.journal import Journal

TOKEN_TYPES = ("input", "cached", "intermediate", "output", "thinking")
COST_CATEGORIES = ("input", "cached", "intermediate", "output", "thinking", "grounding")


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    records: Counter
    tokens: Counter
    cost: Counter
    unpriced: Counter
    parse_errors: Counter
    upstream_latency: Histogram
    writer_queue: Gauge
    unmetered: Counter
    owner_commit_fallbacks: Counter
    keyless_upload_refusals: Counter
    provisional: Counter
    alerts_sent: Counter
    alerts_failed: Counter

    def observe(self, record: UsageRecord) -> None:
        """Count one finished record; called by the recorder, never awaits.

        A provisional record is counted apart: the terminal record that replaces
        it brings the interaction's tokens and cost, which must not count twice.
        """
        if record.provisional:
            self.provisional.inc()
            return
        self.records.labels(record.endpoint.value, f"{record.upstream_status // 100}xx").inc()
        if record.unmetered_route:
            # Zero tokens, cost unknown: counted here, not as unpriced or in the latency
            # of metered calls.
            self.unmetered.labels(record.endpoint.value).inc()
            return
        usage = record.usage
        for name, value in zip(
            TOKEN_TYPES,
            (
                usage.input_tokens,
                usage.cached_tokens,
                usage.intermediate_tokens,
                usage.output_tokens,
                usage.thinking_tokens,
            ),
            strict=True,
        ):
            if value:
                self.tokens.labels(name).inc(value)
        cost = record.cost
        if cost.unpriced:
            self.unpriced.inc()
        else:
            for name, part in zip(
                COST_CATEGORIES,
                (
                    cost.input,
                    cost.cached,
                    cost.intermediate,
                    cost.output,
                    cost.thinking,
                    cost.grounding,
                ),
                strict=True,
            ):
                if part:
                    # Prometheus counts in floats; the exact figure is in the database.
                    self.cost.labels(name).inc(float(part))
        if record.parse_error:
            self.parse_errors.inc()
        self.upstream_latency.labels(record.endpoint.value).observe(record.latency_seconds)


def build_metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(
        registry=registry,
        records=Counter(
            "gemini_meter_records_total",
            "Usage records finished, by endpoint and upstream status class.",
            ["endpoint", "status_class"],
            registry=registry,
        ),
        tokens=Counter(
            "gemini_meter_tokens_total",
            "Tokens metered, by billing category; cached is part of input.",
            ["type"],
            registry=registry,
        ),
        cost=Counter(
            "gemini_meter_cost_usd_total",
            "Cost in US dollars of metered calls, by billing category.",
            ["category"],
            registry=registry,
        ),
        unpriced=Counter(
            "gemini_meter_unpriced_records_total",
            "Records whose model has no price catalog entry; their cost is null.",
            registry=registry,
        ),
        parse_errors=Counter(
            "gemini_meter_usage_parse_errors_total",
            "Responses whose usage metadata was missing or malformed.",
            registry=registry,
        ),
        upstream_latency=Histogram(
            "gemini_meter_request_duration_seconds",
            "Time from receiving a metered call to relaying its last byte.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        ),
        writer_queue=Gauge(
            "gemini_meter_writer_queue_records",
            "Records waiting in the batching writer's queue.",
            registry=registry,
        ),
        unmetered=Counter(
            "gemini_meter_unmetered_route_requests_total",
            "Calls on billable routes the meter cannot read usage from yet, by route; "
            "each is recorded with zero tokens and no cost.",
            ["route"],
            registry=registry,
        ),
        owner_commit_fallbacks=Counter(
            "gemini_meter_owner_commit_fallbacks_total",
            "Interaction owners that could not be committed before the id was released, "
            "left to the batching writer instead.",
            registry=registry,
        ),
        keyless_upload_refusals=Counter(
            "gemini_meter_keyless_upload_refusals_total",
            "Keyless upload legs refused: unknown upload id, or too many in flight.",
            ["reason"],
            registry=registry,
        ),
        provisional=Counter(
            "gemini_meter_provisional_records_total",
            "Provisional records: interactions whose stream was cut before they were"
            " terminal; their terminal record replaces them when it is seen.",
            registry=registry,
        ),
        alerts_sent=Counter(
            "gemini_meter_alerts_sent_total",
            "Budget alerts delivered: accepted by their webhook, or logged for a budget"
            " without one.",
            registry=registry,
        ),
        alerts_failed=Counter(
            "gemini_meter_alerts_failed_total",
            "Budget alert delivery attempts that failed; each is retried with backoff.",
            registry=registry,
        ),
    )


class _JournalCollector(Collector):
    """The journal's plain counters as Prometheus metrics, read at scrape time."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        j = self._journal
        yield GaugeMetricFamily(
            "gemini_meter_journal_bytes",
            "Bytes held by the durable journal: records not yet committed to the database.",
            value=j.held_bytes,
        )
        yield GaugeMetricFamily(
            "gemini_meter_journal_limit_bytes",
            "The journal's size limit; past it records are dropped or new calls refused.",
            value=j.max_bytes,
        )
        yield CounterMetricFamily(
            "gemini_meter_journal_records",
            "Records appended to the durable journal.",
            value=j.appended_total,
        )
        yield CounterMetricFamily(
            "gemini_meter_journal_commits",
            "Group commits of the journal: one write and one fsync for every record"
            " appended meanwhile.",
            value=j.commits_total,
        )
        yield CounterMetricFamily(
            "gemini_meter_journal_dropped",
            "Records dropped because the journal was full (the drop policy).",
            value=j.dropped_total,
        )
        yield CounterMetricFamily(
            "gemini_meter_journal_refused_calls",
            "Billable calls refused with 503 because the journal was full (the refuse policy).",
            value=j.refused_total,
        )
        yield CounterMetricFamily(
            "gemini_meter_journal_write_errors",
            "Group commits the disk failed; their records went on to the database unjournaled.",
            value=j.write_errors_total,
        )
        yield GaugeMetricFamily(
            "gemini_meter_journal_replayed_records",
            "Records found in the journal at start and handed to the writer again.",
            value=j.replayed,
        )


def watch_journal(metrics: Metrics, journal: Journal) -> None:
    """Expose ``journal``'s figures in ``metrics.registry``."""
    metrics.registry.register(_JournalCollector(journal))
