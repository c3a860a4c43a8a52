"""Prometheus metrics, one registry per app (tests build their own).

The names, types and labels follow the metric contract in ``docs/metrics.md``,
which also gives each label's bound and the mapping onto the OpenTelemetry
GenAI conventions. Label values are bounded:

- ``endpoint``: an ``EndpointKind`` value; ``status_class``: ``2xx``..``5xx``;
  ``streamed``: ``true``/``false``; ``type`` and ``category``: the token and
  cost categories; ``status``: an HTTP status code of the upstream;
- ``model``: the catalog's canonical name where the model resolves, else the
  raw name cut to ``MODEL_NAME_MAX`` characters, at most ``MODEL_LIMIT``
  distinct values per process (the rest are ``other``);
- ``principal``: the team or user name, or "" (``Settings.metrics_principal``),
  at most ``metrics_principal_limit`` distinct values (the rest ``other``).

Per-call figures are counted by ``Metrics.observe``, which the recorder calls once per
finished record. The series it adds to on every call (requests, tokens, cost and refunds,
the three latency histograms) are ``_Tally`` and ``_Buckets``: plain floats by label
tuple, made into Prometheus families only at scrape time, so a call pays a dict lookup
and an addition per series where a ``prometheus_client`` child validates, locks and calls
through several layers (an observed call takes 8 µs instead of 13, ``timeit``). They are
exposed exactly as ``Counter`` and ``Histogram`` are, ``_created`` samples included. The
rarer counters are ``prometheus_client``'s, their labelled children cached per label
tuple. Figures other parts keep themselves (the journal, the writer, the budget engine)
are read at scrape time by collectors (``watch_journal``, ``watch_writer``,
``watch_budgets``), from memory only: a scrape never touches the database.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Generic, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ..metering.records import Principal, UsageRecord
from ..settings import MetricsPrincipal

if TYPE_CHECKING:
    from ..budgets.engine import BudgetEngine
    from ..storage.journal import Journal
    from ..storage.writer import UsageWriter

__all__ = [
    "COST_CATEGORIES",
    "MODEL_LIMIT",
    "OTHER",
    "TOKEN_TYPES",
    "Metrics",
    "build_metrics",
    "metrics_app",
    "watch_budgets",
    "watch_journal",
    "watch_writer",
]

log = logging.getLogger("gemini_meter.metrics")

TOKEN_TYPES = ("input", "cached", "intermediate", "output", "thinking")
COST_CATEGORIES = (
    "input",
    "cached",
    "intermediate",
    "output",
    "thinking",
    "grounding",
    "media",
    "storage",
)
# The value a capped label takes once its limit of distinct values is reached.
OTHER = "other"
MODEL_LIMIT = 200
MODEL_NAME_MAX = 64

# Seconds. Calls run from milliseconds (embeddings) to minutes (long generations).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The proxy's own time is meant to stay in the low milliseconds.
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_Child = TypeVar("_Child", Counter, Histogram)
# A bucket's bound as prometheus_client's Histogram spells it in ``le`` ("0.005", "1.0").
_spell_bound: Callable[[float], str] = floatToGoString


class _Children(Generic[_Child]):
    """A metric's labelled children, cached by label tuple.

    ``labels()`` validates and locks on every call; this is a plain dict lookup.
    The cache is bounded by the labels' own bounds.
    """

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: _Child) -> None:
        self._metric: _Child = metric
        self._cache: dict[tuple[str, ...], _Child] = {}

    def __call__(self, *labels: str) -> _Child:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class _Capped:
    """The first ``limit`` distinct values pass as they are; later ones become ``other``."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class _Series(Collector):
    """A labelled family kept in plain Python by label tuple, made into its Prometheus
    family only at scrape time. Only the event loop adds; a scrape (from any thread)
    takes each series' figures in one step."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        # When each series was first added to: its ``_created`` sample.
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class _Tally(_Series):
    """A labelled counter: a float per label tuple, exposed as ``Counter`` is."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._values: dict[tuple[str, ...], float] = {}
        super().__init__(name, documentation, labelnames, registry)

    def add(self, labels: tuple[str, ...], amount: float) -> None:
        value = self._values.get(labels)
        if value is None:
            self._created[labels] = time.time()
            value = 0.0
        self._values[labels] = value + amount

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, value in list(self._values.items()):
            family.add_metric(labels, value, created=self._created[labels])
        yield family


class _Buckets(_Series):
    """A labelled histogram: per label tuple, each bucket's own count and then the sum,
    exposed as ``Histogram`` is (cumulative buckets, ``le`` spelled the same, the count,
    the sum and the ``_created`` sample)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(float(bound) for bound in buckets)
        self._les = [*(_spell_bound(bound) for bound in self._bounds), "+Inf"]
        self._series: dict[tuple[str, ...], list[float]] = {}
        super().__init__(name, documentation, labelnames, registry)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            self._created[labels] = time.time()
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        # The first bucket whose bound the value does not exceed (+Inf past the last).
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, series in list(self._series.items()):
            counts = series[:]  # one step: the loop may add meanwhile
            cumulative = accumulate(counts[:-1])
            family.add_metric(labels, list(zip(self._les, cumulative, strict=True)), counts[-1])
            created = dict(zip(self._labelnames, labels, strict=True))
            family.samples.append(Sample(self._name + "_created", created, self._created[labels]))
        yield family


class Metrics:
    """The proxy's metrics in one registry; ``observe`` counts a finished record."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        principal: MetricsPrincipal = MetricsPrincipal.TEAM,
        principal_limit: int = 100,
        resolve_model: Callable[[str | None], str | None] | None = None,
    ) -> None:
        self.registry = registry
        self._principal_mode = principal
        self._principals = _Capped(principal_limit)
        self._models = _Capped(MODEL_LIMIT)
        self._resolve_model = resolve_model
        # raw model name -> label value; bounded apart from the label cap, since raw
        # names are whatever clients send
        self._model_labels: dict[str | None, str] = {}
        # Also given each finished record (the OTLP export, ``server.otel``).
        self.listeners: list[Callable[[UsageRecord], None]] = []

        self.requests = _Tally(
            "gemini_meter_requests_total",
            "Billable calls finished, by model, endpoint kind, upstream status class,"
            " whether the response was streamed, and principal.",
            ["model", "endpoint", "status_class", "streamed", "principal"],
            registry=registry,
        )
        self.tokens = _Tally(
            "gemini_meter_tokens_total",
            "Tokens metered, by billing category, model and principal; cached tokens are"
            " also counted in input.",
            ["type", "model", "principal"],
            registry=registry,
        )
        self.cost = _Tally(
            "gemini_meter_cost_usd_total",
            "Cost in US dollars of metered calls, by billing category, model and principal.",
            ["category", "model", "principal"],
            registry=registry,
        )
        # A counter only grows: storage given back (a context cache deleted before its
        # expiry) is counted here, so charged less refunded is the net.
        self.refunds = _Tally(
            "gemini_meter_cost_refunded_usd_total",
            "US dollars given back by metered calls, by billing category (context-cache"
            " storage refunded when a cache is deleted early), model and principal.",
            ["category", "model", "principal"],
            registry=registry,
        )
        self.duration = _Buckets(
            "gemini_meter_request_duration_seconds",
            "Time from receiving a metered call to its record being finished: its whole"
            " response read from the upstream, or its stream relayed.",
            ["endpoint", "streamed"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.ttfb = _Buckets(
            "gemini_meter_time_to_first_byte_seconds",
            "Time from receiving a metered call to the upstream's response head.",
            ["endpoint", "streamed"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.overhead = _Buckets(
            "gemini_meter_overhead_seconds",
            "The proxy's own time in a metered call: its duration less the time spent"
            " waiting on the upstream's head and body.",
            ["endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gemini_meter_upstream_errors_total",
            "Upstream responses with an error status (4xx or 5xx), by HTTP status code.",
            ["status"],
            registry=registry,
        )
        self.unpriced = Counter(
            "gemini_meter_unpriced_records_total",
            "Records whose model has no price catalog entry; their cost is null.",
            registry=registry,
        )
        self.unmetered = Counter(
            "gemini_meter_unmetered_route_requests_total",
            "Calls on billable routes the meter cannot read usage from yet, by route; "
            "each is recorded with zero tokens and no cost.",
            ["route"],
            registry=registry,
        )
        self.parse_errors = Counter(
            "gemini_meter_usage_parse_errors_total",
            "Responses whose usage metadata was missing or malformed, by endpoint kind.",
            ["endpoint"],
            registry=registry,
        )
        self.total_mismatches = Counter(
            "gemini_meter_total_mismatch_total",
            "Responses whose reported total tokens is not the sum of the billed parts,"
            " by endpoint kind.",
            ["endpoint"],
            registry=registry,
        )
        self.writer_batch = Histogram(
            "gemini_meter_writer_batch_duration_seconds",
            "Time one batch write to the database took, failed attempts included.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.owner_commit_fallbacks = Counter(
            "gemini_meter_owner_commit_fallbacks_total",
            "Interaction owners that could not be committed before the id was released, "
            "left to the batching writer instead.",
            registry=registry,
        )
        self.keyless_upload_refusals = Counter(
            "gemini_meter_keyless_upload_refusals_total",
            "Keyless upload legs refused: unknown upload id, or too many in flight.",
            ["reason"],
            registry=registry,
        )
        self.provisional = Counter(
            "gemini_meter_provisional_records_total",
            "Provisional records: interactions whose stream was cut before they were"
            " terminal; their terminal record replaces them when it is seen.",
            registry=registry,
        )
        self.alerts_sent = Counter(
            "gemini_meter_alerts_sent_total",
            "Budget alerts delivered: accepted by their webhook, or logged for a budget"
            " without one.",
            registry=registry,
        )
        self.alerts_failed = Counter(
            "gemini_meter_alerts_failed_total",
            "Budget alert delivery attempts that failed; each is retried with backoff.",
            registry=registry,
        )
        self._upstream_errors = _Children(self.upstream_errors)
        self._unmetered = _Children(self.unmetered)
        self._parse_errors = _Children(self.parse_errors)
        self._total_mismatches = _Children(self.total_mismatches)

    # --- label values ------------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        """The ``model`` label for a record's model name (see the module docstring)."""
        label = self._model_labels.get(model)
        if label is None:
            resolved = self._resolve_model(model) if self._resolve_model is not None else None
            label = self._models(resolved or (model or "")[:MODEL_NAME_MAX])
            if len(self._model_labels) < 4 * MODEL_LIMIT:
                self._model_labels[model] = label
        return label

    def principal_label(self, principal: Principal) -> str:
        """The ``principal`` label: team, user or "", per ``Settings.metrics_principal``."""
        mode = self._principal_mode
        if mode is MetricsPrincipal.NONE:
            return ""
        name = principal.team_name if mode is MetricsPrincipal.TEAM else principal.user_name
        return self._principals(name or "")

    # --- counting ----------------------------------------------------------------------------

    def upstream_error(self, status: int) -> None:
        """Count an upstream response with an error status (any route, metered or not)."""
        self._upstream_errors(str(status)).inc()

    def observe(self, record: UsageRecord) -> None:
        """Count one finished record; called by the recorder, never awaits.

        A provisional record is counted apart: the terminal record that replaces
        it brings the interaction's tokens and cost, which must not count twice.
        """
        if record.provisional:
            self.provisional.inc()
            return
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                log.exception("a metrics listener failed; the record is kept")
        endpoint = record.endpoint.value
        model = self.model_label(record.model)
        principal = self.principal_label(record.principal)
        streamed = "true" if record.streamed else "false"
        status_class = f"{record.upstream_status // 100}xx"
        self.requests.add((model, endpoint, status_class, streamed, principal), 1.0)
        if record.unmetered_route:
            # Zero tokens, cost unknown: counted here, not as unpriced, and its
            # latency (to the response head only) stays out of the metered calls'.
            self._unmetered(endpoint).inc()
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
                self.tokens.add((name, model, principal), value)
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
                    cost.media,
                    cost.storage,
                ),
                strict=True,
            ):
                # Prometheus counts in floats; the exact figure is in the database.
                if part and part > 0:
                    self.cost.add((name, model, principal), float(part))
                elif part:
                    self.refunds.add((name, model, principal), float(-part))
        if record.parse_error:
            self._parse_errors(endpoint).inc()
        elif usage.total_mismatch:
            self._total_mismatches(endpoint).inc()
        latency = record.latency_seconds
        self.duration.observe((endpoint, streamed), latency)
        if record.ttfb_seconds is not None:
            self.ttfb.observe((endpoint, streamed), record.ttfb_seconds)
        if record.upstream_seconds is not None:
            self.overhead.observe((endpoint,), max(0.0, latency - record.upstream_seconds))


def build_metrics(
    registry: CollectorRegistry,
    *,
    principal: MetricsPrincipal = MetricsPrincipal.TEAM,
    principal_limit: int = 100,
    resolve_model: Callable[[str | None], str | None] | None = None,
) -> Metrics:
    """The proxy's metrics in ``registry``; ``resolve_model`` names a model as the
    price catalog does (``Catalog.resolve``)."""
    return Metrics(
        registry,
        principal=principal,
        principal_limit=principal_limit,
        resolve_model=resolve_model,
    )


# --- read at scrape time ---------------------------------------------------------------------


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


class _WriterCollector(Collector):
    """The batching writer's health counters, read at scrape time."""

    def __init__(self, writer: UsageWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        w = self._writer
        yield GaugeMetricFamily(
            "gemini_meter_writer_queue_records",
            "Records waiting in the batching writer's queue, the batch being written included.",
            value=w.queued,
        )
        yield CounterMetricFamily(
            "gemini_meter_writer_failures",
            "Batch writes the database failed; each is retried with backoff, so a steady"
            " rise means the database is not taking records.",
            value=w.failed_batches_total,
        )
        yield CounterMetricFamily(
            "gemini_meter_writer_rows_refused",
            "Rows the database refused on their own merits (not retried): lost records.",
            value=w.failed_rows_total,
        )
        yield CounterMetricFamily(
            "gemini_meter_writer_dropped",
            "Rows refused because the writer's queue was full or it had closed.",
            value=w.dropped_total,
        )


def watch_writer(metrics: Metrics, writer: UsageWriter) -> None:
    """Expose ``writer``'s figures in ``metrics.registry``."""
    metrics.registry.register(_WriterCollector(writer))


_BUDGET_LABELS = ("budget_id", "scope", "window", "unit")
_NANOS_PER_USD = 1_000_000_000


class _BudgetCollector(Collector):
    """Each budget's spend, limit, utilisation and window end, from the engine's memory.

    Spend is the engine's counted spend in the current window (refreshed from the
    database every ``budget_refresh_seconds``, settled in memory meanwhile); a
    scrape never queries the database.
    """

    def __init__(self, engine: BudgetEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        labels = list(_BUDGET_LABELS)
        spend = GaugeMetricFamily(
            "gemini_meter_budget_spend",
            "A budget's spend in its current window, in its unit (US dollars or tokens).",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "gemini_meter_budget_limit",
            "A budget's limit per window, in its unit (US dollars or tokens).",
            labels=labels,
        )
        ratio = GaugeMetricFamily(
            "gemini_meter_budget_utilization_ratio",
            "A budget's spend in its current window divided by its limit.",
            labels=labels,
        )
        end = GaugeMetricFamily(
            "gemini_meter_budget_window_end_timestamp_seconds",
            "When a budget's current window ends, in Unix seconds; 0 for a total budget,"
            " which never resets.",
            labels=labels,
        )
        for view in self._engine.views():
            budget = view.budget
            usd = budget.unit.value == "nano_usd"
            scale = 1 / _NANOS_PER_USD if usd else 1
            values = [str(budget.id), budget.scope, budget.window.value, "usd" if usd else "tokens"]
            spend.add_metric(values, view.spend * scale)
            limit.add_metric(values, budget.limit * scale)
            ratio.add_metric(values, view.spend / budget.limit if budget.limit else 0.0)
            end.add_metric(values, view.end.timestamp() if view.end is not None else 0.0)
        yield from (spend, limit, ratio, end)


def watch_budgets(metrics: Metrics, engine: BudgetEngine) -> None:
    """Expose ``engine``'s budgets in ``metrics.registry``."""
    metrics.registry.register(_BudgetCollector(engine))


# --- exposition ------------------------------------------------------------------------------


def exposition(registry: CollectorRegistry) -> web.Response:
    """``registry`` in the Prometheus text format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def metrics_app(metrics: Metrics) -> web.Application:
    """An app serving only ``GET /metrics`` from ``metrics``, for a separate metrics port."""

    async def handler(request: web.Request) -> web.Response:
        return exposition(metrics.registry)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
