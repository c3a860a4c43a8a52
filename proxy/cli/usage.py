"""``gemini-meter usage``: tokens and cost per user, team, model or day, as a report."""

from __future__ import annotations

import argparse
import asyncio

from ..settings import Settings
from ..storage import reports
from .common import _ensure_schema, _settings, _with_session
from .format import render

# The report's columns: the token categories, then the cost and its split.
REPORT_COLUMNS = ("requests", *reports.TOKEN_COLUMNS, *reports.COST_COLUMNS)


def usage_rows(settings: Settings, args: argparse.Namespace) -> list[dict[str, object]]:
    group_by = tuple(args.group_by or ("user",))
    rows: list[dict[str, object]] = asyncio.run(
        _with_session(
            settings,
            lambda s: reports.usage_report(
                s,
                user=args.user,
                team=args.team,
                model=args.model,
                since=args.since,
                until=args.until,
                group_by=group_by,
            ),
        )
    )
    return rows


def cmd_usage(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    group_by = list(dict.fromkeys(args.group_by or ["user"]))
    args.group_by = group_by
    rows = usage_rows(settings, args)
    print(render(rows, [*group_by, *REPORT_COLUMNS], args.format))
    return 0
