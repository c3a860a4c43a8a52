"""What the observability tests share: the repository's dashboards, rules and compose files,
read as their consumers (Grafana, Prometheus, Docker Compose) read them."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
GRAFANA = DASHBOARDS / "grafana"
RULES = DASHBOARDS / "prometheus" / "rules.yml"
RULES_TEST = DASHBOARDS / "prometheus" / "rules_test.yml"
COMPOSE = ROOT / "docker-compose.yml"
UIDS = ("gemini-meter-cost", "gemini-meter-budgets", "gemini-meter-health")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def build_module() -> ModuleType:
    """``dashboards/build.py``, imported from its path (``dashboards`` is no package)."""
    spec = importlib.util.spec_from_file_location("dashboards_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dashboard(uid: str) -> dict[str, Any]:
    return dict(json.loads((GRAFANA / f"{uid}.json").read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' children included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, panel title, refId, expr) of every query of every dashboard."""
    return [
        (uid, panel["title"], target["refId"], target["expr"])
        for uid in UIDS
        for panel in panels(dashboard(uid))
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expr) of every rule in rules.yml."""
    return [
        (rule["alert"], rule["expr"])
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
    ]
