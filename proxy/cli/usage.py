"""``gemini-meter usage``: tokens and cost per user, team, key, model, endpoint, day or
label, as a report.

The table shows a few columns by default (the categories that add up to the total, and
the cost); JSON and CSV carry every measure unless ``--columns`` narrows them.

The report comes from the database (``--database``) or, given ``--url`` (or
``GEMINI_METER_ADMIN_URL``), from a running proxy's ``GET /admin/v1/usage``, which runs
the same ``storage.reports.usage_report``; both ways print alike. Amounts are printed
normalised ("1.3", not PostgreSQL's "1.300000000000"), as the admin API sends them.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from ..storage.columns import COST_COLUMNS, GROUP_KEYS, LABEL_PREFIX, TOKEN_COLUMNS
from .common import Subparsers, _ensure_schema, _settings, _with_session, command
from .format import FORMATS, render
from .remote import AdminTarget, admin_call, local_or_remote_flags, remote_target

if TYPE_CHECKING:
    from ..settings import Settings

# The report's names are the command's vocabulary too (what --group-by and --columns
# accept), so they are offered from here, the same objects as storage.reports'.
__all__ = ["COST_COLUMNS", "GROUP_KEYS", "LABEL_PREFIX", "TOKEN_COLUMNS", "register"]

# Report names from ``storage.columns``: constants only, so the parser loads no database.
# Every measure a report row has, in the order JSON and CSV show them.
REPORT_COLUMNS = ("requests", *TOKEN_COLUMNS, *COST_COLUMNS)
COLUMNS = (*REPORT_COLUMNS, "unpriced_requests")
# The table's default: cached tokens are part of input, so the categories shown add
# up to total_tokens; the cost split is one `--columns` away.
TABLE_COLUMNS = (
    "requests",
    "input_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
    "cost_usd",
)


def _when(value: str) -> datetime:
    """An ISO date or date-time; naive values are UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def group_key(value: str) -> str:
    """``--group-by``: one of ``GROUP_KEYS`` or ``label:NAME``."""
    if value in GROUP_KEYS or (value.startswith(LABEL_PREFIX) and len(value) > len(LABEL_PREFIX)):
        return value
    raise argparse.ArgumentTypeError(
        f"cannot group by {value!r}; choose from {', '.join(GROUP_KEYS)} or label:NAME"
    )


def columns(value: str) -> list[str]:
    """``--columns``: comma-separated measures, or ``all``."""
    if value.strip() == "all":
        return list(COLUMNS)
    chosen = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in COLUMNS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown column {', '.join(map(repr, unknown)) or repr(value)}; "
            f"choose from {', '.join(COLUMNS)}"
        )
    return list(dict.fromkeys(chosen))


def register(subparsers: Subparsers) -> None:
    p = command(
        subparsers,
        "usage",
        cmd_usage,
        help="usage and cost report",
        description="Token and cost totals per group over the stored records.\n\n"
        "examples:\n"
        "  gemini-meter usage --group-by team model --since 2026-11-01\n"
        "  gemini-meter usage --group-by label:project --columns requests,cost_usd\n"
        "  gemini-meter usage --user alice --group-by day --format json\n"
        "  gemini-meter usage --url https://meter.example.internal --group-by team\n\n"
        f"columns: {', '.join(COLUMNS)}\n\n"
        "Works on the database, or on a running proxy through its admin API with --url.",
    )
    p.add_argument("--user", help="only this user's records")
    p.add_argument("--team", help="only the records billed to this team")
    p.add_argument("--model", help="only this model's records")
    p.add_argument("--since", type=_when, help="ISO date or time, inclusive (UTC if naive)")
    p.add_argument("--until", type=_when, help="ISO date or time, exclusive (UTC if naive)")
    p.add_argument(
        "--group-by",
        nargs="+",
        type=group_key,
        metavar="KEY",
        help=f"one or more of {', '.join(GROUP_KEYS)}, label:NAME (a request label's value); "
        "key is the key id, day the UTC date (default: user)",
    )
    p.add_argument(
        "--columns",
        type=columns,
        metavar="A,B,...",
        help="the measures to show, comma-separated, or `all` (default: "
        f"{', '.join(TABLE_COLUMNS)} for the table, all for json and csv)",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    local_or_remote_flags(p)


def usage_rows(settings: Settings, args: argparse.Namespace) -> list[dict[str, object]]:
    from ..storage import reports

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


def _utc_text(when: datetime) -> str:
    # "Z" rather than "+00:00": a "+" in a query string can read as a space.
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def remote_usage_rows(target: AdminTarget, args: argparse.Namespace) -> list[dict[str, object]]:
    """The report from ``GET /admin/v1/usage``, as ``usage_rows`` makes it locally."""
    from ..admin.models import UsageReport

    params = {"group_by": ",".join(args.group_by)}
    for name in ("user", "team", "model"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            params[name] = _utc_text(getattr(args, name))
    report = UsageReport.model_validate(admin_call(target, "GET", "/admin/v1/usage", None, params))
    # Attributes, not model_dump(): that would turn the amounts back into strings.
    return [
        {**{name: getattr(row, name) for name in type(row).model_fields}, **(row.model_extra or {})}
        for row in report.rows
    ]


def _normalised(row: dict[str, object]) -> dict[str, object]:
    return {
        k: Decimal(format(v.normalize(), "f")) if isinstance(v, Decimal) else v
        for k, v in row.items()
    }


def cmd_usage(args: argparse.Namespace) -> int:
    group_by = list(dict.fromkeys(args.group_by or ["user"]))
    args.group_by = group_by
    target = remote_target(args)
    if target is not None:
        rows = remote_usage_rows(target, args)
    else:
        settings = _settings(args)
        _ensure_schema(settings, create=False)
        rows = usage_rows(settings, args)
    rows = [_normalised(r) for r in rows]
    shown = args.columns or (TABLE_COLUMNS if args.format == "table" else REPORT_COLUMNS)
    print(render(rows, [*group_by, *shown], args.format))
    return 0
