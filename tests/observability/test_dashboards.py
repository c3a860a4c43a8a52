"""The Grafana dashboards, checked structurally (Grafana's server is not packaged for this
machine): the committed JSON is exactly what ``dashboards/build.py`` builds with
grafana-foundation-sdk's typed builders, uids are fixed, and every datasource reference
goes through the ``datasource`` variable to the datasource the provisioning file creates.
Their queries run on a real Prometheus in ``test_prometheus.py``."""

from __future__ import annotations

import json

import pytest

from tests.observability.helpers import (
    COMPOSE,
    DASHBOARDS,
    GRAFANA,
    UIDS,
    build_module,
    dashboard,
    load_yaml,
    panel_queries,
    panels,
)

PROVISIONED = DASHBOARDS / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER = DASHBOARDS / "provisioning" / "dashboards" / "gemini-meter.yml"


def test_the_committed_json_is_what_the_generator_builds():
    build = build_module()
    assert sorted(build.DASHBOARDS) == sorted(UIDS)
    assert sorted(p.name for p in GRAFANA.glob("*.json")) == sorted(f"{u}.json" for u in UIDS)
    for uid in UIDS:
        committed = (GRAFANA / f"{uid}.json").read_text()
        assert committed == build.render(uid), (
            f"{uid}.json differs from dashboards/build.py's output: run python dashboards/build.py"
        )


@pytest.mark.parametrize("uid", UIDS)
def test_each_dashboard_has_its_fixed_uid_and_a_prometheus_datasource_variable(uid: str):
    board = dashboard(uid)
    assert board["uid"] == uid
    assert board["title"].startswith("Gemini Meter: ")
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


def test_every_datasource_reference_resolves_to_the_provisioned_prometheus():
    [provisioned] = load_yaml(PROVISIONED)["datasources"]
    assert provisioned["type"] == "prometheus"
    for uid in UIDS:
        board = dashboard(uid)
        [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
        # The variable lists datasources of the provisioned one's type and defaults to it.
        assert variable["query"] == provisioned["type"]
        assert variable["current"]["value"] == provisioned["uid"]
        assert variable["current"]["text"] == provisioned["name"]
        refs = []
        for panel in panels(board):
            refs.append((panel["title"], panel["datasource"]))
            refs += [(panel["title"], t["datasource"]) for t in panel.get("targets", [])]
        assert refs
        for title, ref in refs:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, title
        # Nothing else in the file names a datasource (a stray uid would not resolve).
        text = json.dumps(board)
        assert text.count('"uid": "${datasource}"') == len(refs)


def test_every_panel_has_queries_and_fits_the_grid():
    for uid in UIDS:
        board = dashboard(uid)
        titles = [p["title"] for p in panels(board)]
        assert len(titles) == len(set(titles)), uid
        for panel in panels(board):
            assert panel.get("targets"), panel["title"]
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
            assert panel.get("description"), panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_the_dashboards_cover_what_the_issue_asks_for():
    exprs = {uid: " ".join(e for u, _, _, e in panel_queries() if u == uid) for uid in UIDS}
    cost = exprs["gemini-meter-cost"]
    for needle in (
        "sum by (model) (rate(gemini_meter_cost_usd_total",
        "sum by (principal) (rate(gemini_meter_cost_usd_total",
        "sum by (type) (rate(gemini_meter_tokens_total",
        'category="intermediate"',
        'category="thinking"',
        "topk(10, sum by (principal)",
    ):
        assert needle in cost, needle
    budgets = exprs["gemini-meter-budgets"]
    for needle in (
        "gemini_meter_budget_utilization_ratio",
        "deriv(gemini_meter_budget_spend[1h])",
        "gemini_meter_budget_window_end_timestamp_seconds - time()",
    ):
        assert needle in budgets, needle
    health = exprs["gemini-meter-health"]
    for needle in (
        "rate(gemini_meter_requests_total",
        "gemini_meter_upstream_errors_total",
        "histogram_quantile(0.95, sum by (le, endpoint) "
        "(rate(gemini_meter_request_duration_seconds_bucket",
        "gemini_meter_overhead_seconds_bucket",
        "gemini_meter_time_to_first_byte_seconds_bucket",
        "gemini_meter_writer_queue_records",
        "gemini_meter_writer_batch_duration_seconds_bucket",
        "gemini_meter_writer_failures_total",
        "gemini_meter_journal_bytes",
        "gemini_meter_journal_limit_bytes",
        "gemini_meter_journal_dropped_total",
    ):
        assert needle in health, needle


def test_the_dashboard_provider_loads_the_folder_compose_mounts():
    [provider] = load_yaml(PROVIDER)["providers"]
    assert provider["type"] == "file"
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./dashboards/grafana"
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == f"./dashboards/provisioning/{kind}"
