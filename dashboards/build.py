"""Builds the Grafana dashboards in ``dashboards/grafana/`` from typed builders.

Run ``python dashboards/build.py`` after changing a panel; the JSON it writes is
committed, and ``tests/observability/test_dashboards.py`` fails when the committed
files differ from what this script builds. The queries use the metric names of
``docs/metrics.md`` (``gemini_meter_*``); every panel and every query takes its
datasource from the ``datasource`` template variable (type ``prometheus``), whose
default is the datasource that ``provisioning/datasources/prometheus.yml`` provisions.
``tests/observability/test_prometheus.py`` runs every query here against a real
Prometheus that scraped the proxy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dash_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

HERE = Path(__file__).resolve().parent
OUT = HERE / "grafana"

# The provisioned datasource (provisioning/datasources/prometheus.yml) and the variable
# every panel reads it through, so a team can point a dashboard at its own Prometheus.
DATASOURCE_UID = "gemini-meter-prometheus"
DATASOURCE_NAME = "Prometheus"
DS = dash_models.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Money per hour reads better than per second; Grafana's rate window follows the scrape interval.
PER_HOUR = "3600"
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


def _targets(queries: list[Query]) -> list[prometheus.Dataquery]:
    targets = []
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        target = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DS)
        if q.legend:
            target = target.legend_format(q.legend)
        if q.instant:
            target = target.instant().format(prometheus_models.PromQueryFormat.TABLE)
        else:
            target = target.range()
        targets.append(target)
    return targets


def _timeseries(
    title: str,
    description: str,
    queries: list[Query],
    unit: str,
    *,
    stacked: bool = False,
    width: int = 12,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(_targets(queries))
        .unit(unit)
        .height(8)
        .span(width)
        .fill_opacity(30 if stacked else 10)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    return panel


def _stat(title: str, description: str, query: Query, unit: str, width: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(_targets([query]))
        .unit(unit)
        .height(5)
        .span(width)
        .graph_mode(common_models.BigValueGraphMode.NONE)
    )


def _table(title: str, description: str, queries: list[Query], unit: str) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(_targets(queries))
        .unit(unit)
        .height(9)
        .span(12)
        .with_transformation(
            dash_models.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}},
            )
        )
    )


def _dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["gemini-meter"])
        .editable()
        .refresh("1m")
        .time("now-24h", "now")
        .timezone("browser")
        .with_variable(
            dash.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(
                dash_models.VariableOption(
                    selected=True, text=DATASOURCE_NAME, value=DATASOURCE_UID
                )
            )
        )
    )


# ------------------------------------------------------------------------------ cost and tokens


def cost_dashboard() -> dash.Dashboard:
    spend = "gemini_meter_cost_usd_total"
    tokens = "gemini_meter_tokens_total"
    in_range = "$__range"
    return (
        _dashboard(
            "gemini-meter-cost",
            "Gemini Meter: cost and tokens",
            "What the Gemini API costs, by model and by team, and which token categories"
            " the money goes to. Figures are the proxy's counters; the database holds the"
            " exact amounts.",
        )
        .with_panel(
            _stat(
                "Spend in range",
                "US dollars of metered calls in the selected time range.",
                Query(f"sum(increase({spend}[{in_range}]))"),
                "currencyUSD",
            )
        )
        .with_panel(
            _stat(
                "Tokens in range",
                "Tokens of every category in the selected time range (cached is part of"
                " input, so it is left out of the sum).",
                Query(f'sum(increase({tokens}{{type!="cached"}}[{in_range}]))'),
                "short",
            )
        )
        .with_panel(
            _stat(
                "Code execution share of spend",
                "Intermediate tokens (code execution and tool results fed back to the model)"
                " as a share of spend in the range.",
                Query(
                    f'sum(increase({spend}{{category="intermediate"}}[{in_range}]))'
                    f" / sum(increase({spend}[{in_range}]))"
                ),
                "percentunit",
            )
        )
        .with_panel(
            _stat(
                "Thinking share of spend",
                "Thinking tokens as a share of spend in the range.",
                Query(
                    f'sum(increase({spend}{{category="thinking"}}[{in_range}]))'
                    f" / sum(increase({spend}[{in_range}]))"
                ),
                "percentunit",
            )
        )
        .with_panel(
            _timeseries(
                "Spend by model",
                "US dollars per hour, by model.",
                [Query(f"sum by (model) (rate({spend}[{RATE}])) * {PER_HOUR}", "{{model}}")],
                "currencyUSD",
                stacked=True,
            )
        )
        .with_panel(
            _timeseries(
                "Spend by team",
                "US dollars per hour, by principal (the team, or the user, as the proxy's"
                " GEMINI_METER_METRICS_PRINCIPAL setting says).",
                [
                    Query(
                        f"sum by (principal) (rate({spend}[{RATE}])) * {PER_HOUR}",
                        "{{principal}}",
                    )
                ],
                "currencyUSD",
                stacked=True,
            )
        )
        .with_panel(
            _timeseries(
                "Tokens by type",
                "Tokens per second, stacked by billing category. Cached tokens are a part"
                " of input billed at the cached rate.",
                [Query(f"sum by (type) (rate({tokens}[{RATE}]))", "{{type}}")],
                "short",
                stacked=True,
            )
        )
        .with_panel(
            _timeseries(
                "Spend by category",
                "US dollars per hour, stacked by cost category: code execution's"
                " (intermediate) and thinking's share at a glance.",
                [
                    Query(
                        f"sum by (category) (rate({spend}[{RATE}])) * {PER_HOUR}",
                        "{{category}}",
                    )
                ],
                "currencyUSD",
                stacked=True,
            )
        )
        .with_panel(
            _table(
                "Top spenders",
                "The ten principals that spent most in the range.",
                [
                    Query(
                        f"topk(10, sum by (principal) (increase({spend}[{in_range}])))",
                        instant=True,
                    )
                ],
                "currencyUSD",
            )
        )
        .with_panel(
            _table(
                "Top models",
                "The ten models that cost most in the range.",
                [
                    Query(
                        f"topk(10, sum by (model) (increase({spend}[{in_range}])))",
                        instant=True,
                    )
                ],
                "currencyUSD",
            )
        )
    )


# ------------------------------------------------------------------------------ budgets

SPEND = "gemini_meter_budget_spend"
LIMIT = "gemini_meter_budget_limit"
WINDOW_END = "gemini_meter_budget_window_end_timestamp_seconds"
# Spend per second over the last hour; a window that starts anew drops the spend, which
# clamp_min keeps from reading as a negative burn.
BURN = f"clamp_min(deriv({SPEND}[1h]), 0)"
# The spend the window will end with at the last hour's pace; total budgets (window end 0)
# have no end to extrapolate to.
PROJECTED = f"({SPEND} + {BURN} * ({WINDOW_END} - time())) / {LIMIT} and {WINDOW_END} > 0"


def budgets_dashboard() -> dash.Dashboard:
    by_budget = "{{scope}} {{window}} ({{unit}}, #{{budget_id}})"
    return (
        _dashboard(
            "gemini-meter-budgets",
            "Gemini Meter: budgets",
            "Each budget's use of its limit in the current window, how fast it is being"
            " spent, and where that pace ends. Figures are each proxy process's view.",
        )
        .with_panel(
            bargauge.Panel()
            .title("Utilisation")
            .description("Spend in the current window as a share of the limit.")
            .datasource(DS)
            .targets(
                _targets(
                    [
                        Query(
                            "max by (budget_id, scope, window, unit) "
                            "(gemini_meter_budget_utilization_ratio)",
                            by_budget,
                        )
                    ]
                )
            )
            .unit("percentunit")
            .min(0)
            .max(1)
            .thresholds(
                dash.ThresholdsConfig()
                .mode(dash_models.ThresholdsMode.ABSOLUTE)
                .steps(
                    [
                        dash_models.Threshold(value=None, color="green"),
                        dash_models.Threshold(value=0.8, color="orange"),
                        dash_models.Threshold(value=1, color="red"),
                    ]
                )
            )
            .height(8)
            .span(12)
        )
        .with_panel(
            _table(
                "Spend and limit",
                "Each budget's spend in its current window and its limit, in its unit"
                " (US dollars or tokens).",
                [
                    Query(f"max by (budget_id, scope, window, unit) ({SPEND})", instant=True),
                    Query(f"max by (budget_id, scope, window, unit) ({LIMIT})", instant=True),
                ],
                "short",
            )
        )
        .with_panel(
            _timeseries(
                "Burn rate",
                "Spend per hour over the last hour, in the budget's unit.",
                [
                    Query(
                        f"max by (budget_id, scope, window, unit) ({BURN}) * {PER_HOUR}", by_budget
                    )
                ],
                "short",
            )
        )
        .with_panel(
            _timeseries(
                "Projected utilisation at window end",
                "Where the window ends at the last hour's pace: above 100% the budget runs"
                " out before its window does.",
                [Query(f"max by (budget_id, scope, window, unit) ({PROJECTED})", by_budget)],
                "percentunit",
            )
        )
        .with_panel(
            _table(
                "Projected exhaustion",
                "When the limit is reached at the last hour's pace, for budgets that will"
                " run out before their window ends.",
                [
                    Query(
                        f"max by (budget_id, scope, window, unit) "
                        f"(time() + ({LIMIT} - {SPEND}) / ({BURN} > 0)"
                        f" < {WINDOW_END}) * 1000",
                        instant=True,
                    )
                ],
                "dateTimeAsIso",
            )
        )
        .with_panel(
            _timeseries(
                "Refusals and alerts",
                "Calls refused by enforced budgets, by scope kind; budget alerts delivered"
                " and failed.",
                [
                    Query(
                        f"sum by (scope) (increase(gemini_meter_budget_refusals_total[{RATE}]))",
                        "refused: {{scope}}",
                    ),
                    Query(f"sum(increase(gemini_meter_alerts_sent_total[{RATE}]))", "alerts sent"),
                    Query(
                        f"sum(increase(gemini_meter_alerts_failed_total[{RATE}]))",
                        "alerts failed",
                    ),
                ],
                "short",
            )
        )
    )


# ------------------------------------------------------------------------------ proxy health


def _quantiles(metric: str, by: str) -> list[Query]:
    return [
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def health_dashboard() -> dash.Dashboard:
    requests = "gemini_meter_requests_total"
    return (
        _dashboard(
            "gemini-meter-health",
            "Gemini Meter: proxy health",
            "Traffic, errors and latency through the proxy, its own overhead, and the path"
            " records take to the database (journal and batching writer).",
        )
        .with_panel(
            _timeseries(
                "Request rate",
                "Calls per second by endpoint kind and status class.",
                [
                    Query(
                        f"sum by (endpoint, status_class) (rate({requests}[{RATE}]))",
                        "{{endpoint}} {{status_class}}",
                    )
                ],
                "reqps",
            )
        )
        .with_panel(
            _timeseries(
                "Errors",
                "The share of calls answered 4xx or 5xx, and upstream errors per second by"
                " HTTP status.",
                [
                    Query(
                        f'sum(rate({requests}{{status_class=~"4xx|5xx"}}[{RATE}]))'
                        f" / sum(rate({requests}[{RATE}]))",
                        "error ratio",
                    ),
                    Query(
                        f"sum by (status) (rate(gemini_meter_upstream_errors_total[{RATE}]))",
                        "upstream {{status}}",
                    ),
                ],
                "short",
            )
        )
        .with_panel(
            _timeseries(
                "Latency",
                "Time from receiving a call to relaying its last byte, by endpoint kind.",
                _quantiles("gemini_meter_request_duration_seconds", "endpoint"),
                "s",
            )
        )
        .with_panel(
            _timeseries(
                "Time to first byte",
                "Time from receiving a call to relaying the first byte of its answer.",
                _quantiles("gemini_meter_time_to_first_byte_seconds", "endpoint"),
                "s",
            )
        )
        .with_panel(
            _timeseries(
                "Proxy overhead",
                "The proxy's own time outside the upstream call: what metering costs.",
                _quantiles("gemini_meter_overhead_seconds", "endpoint"),
                "s",
            )
        )
        .with_panel(
            _timeseries(
                "Writer",
                "Records waiting for the batching writer, and its failed write attempts"
                " (each retried; a failure delays records, it does not lose them).",
                [
                    Query("sum(gemini_meter_writer_queue_records)", "queued records"),
                    Query(
                        f"sum(increase(gemini_meter_writer_failures_total[{RATE}]))",
                        "failed writes",
                    ),
                ],
                "short",
            )
        )
        .with_panel(
            _timeseries(
                "Writer batch duration",
                "Time to write one batch of records to the database.",
                [
                    Query(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(gemini_meter_writer_batch_duration_seconds_bucket[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                "s",
            )
        )
        .with_panel(
            _timeseries(
                "Journal",
                "Bytes held by the durable journal (records not yet in the database)"
                " against its limit.",
                [
                    Query("sum by (instance) (gemini_meter_journal_bytes)", "held {{instance}}"),
                    Query(
                        "sum by (instance) (gemini_meter_journal_limit_bytes)",
                        "limit {{instance}}",
                    ),
                ],
                "bytes",
            )
        )
        .with_panel(
            _timeseries(
                "Dropped records",
                "Records dropped because the journal was full (the drop policy).",
                [
                    Query(
                        f"sum(increase(gemini_meter_journal_dropped_total[{RATE}]))",
                        "dropped",
                    )
                ],
                "short",
            )
        )
        .with_panel(
            _timeseries(
                "Metering gaps",
                "Calls whose cost or tokens the meter could not know: unpriced models,"
                " unmetered routes, unreadable usage, totals that are not the sum of their"
                " parts.",
                [
                    Query(
                        f"sum(increase(gemini_meter_unpriced_records_total[{RATE}]))",
                        "unpriced",
                    ),
                    Query(
                        "sum by (route) "
                        f"(increase(gemini_meter_unmetered_route_requests_total[{RATE}]))",
                        "unmetered {{route}}",
                    ),
                    Query(
                        "sum by (endpoint) "
                        f"(increase(gemini_meter_usage_parse_errors_total[{RATE}]))",
                        "parse errors {{endpoint}}",
                    ),
                    # Zero when no total has ever mismatched: the series is labelled by
                    # endpoint, so it only exists once one has.
                    Query(
                        f"sum(increase(gemini_meter_total_mismatch_total[{RATE}])) or vector(0)",
                        "total mismatches",
                    ),
                ],
                "short",
            )
        )
    )


DASHBOARDS = {
    "gemini-meter-cost": cost_dashboard,
    "gemini-meter-budgets": budgets_dashboard,
    "gemini-meter-health": health_dashboard,
}


def render(uid: str) -> str:
    """The dashboard ``uid`` as the JSON committed in ``grafana/``."""
    built = DASHBOARDS[uid]().build()
    return json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for uid in DASHBOARDS:
        (OUT / f"{uid}.json").write_text(render(uid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
