"""``gemini-meter budgets set|list|status|delete``: spending caps, locally or remotely.

Each command works on the database (``--database``, as the other commands) or, given
``--url`` (or ``GEMINI_METER_ADMIN_URL``), on a running proxy through its admin API
(``cli.remote``). Both ways a budget is validated by ``budgets.model.BudgetSpec`` and
printed alike. Heavy imports (pydantic models, storage) wait until a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from ..budgets.windows import Window
from .common import Subparsers, command, database_flag, group
from .remote import add_remote_flags, admin_call, remote_target

if TYPE_CHECKING:
    from ..budgets.model import Budget, BudgetStatus

__all__ = ["register"]

# The flag that sets each BudgetSpec field, for error messages a user can act on.
FLAGS = {
    "scope": "--scope",
    "limit_usd": "--limit-usd",
    "limit_tokens": "--limit-tokens",
    "category": "--category",
    "window": "--window",
    "timezone": "--timezone",
    "thresholds": "--thresholds",
    "mode": "--mode",
    "webhook": "--webhook",
    "webhook_format": "--webhook-format",
}
LIST_COLUMNS = [
    "id",
    "scope",
    "limit",
    "category",
    "window",
    "timezone",
    "thresholds",
    "mode",
    "webhook",
]
STATUS_COLUMNS = [
    "id",
    "scope",
    "window",
    "spend",
    "limit",
    "ratio",
    "window_start",
    "resets_at",
    "exceeded",
]
_FORMATS = ("table", "json", "csv")


def _database_flag(parser: argparse.ArgumentParser) -> None:
    database_flag(parser)
    add_remote_flags(parser)


def register(subparsers: Subparsers) -> None:
    """The ``budgets`` command group."""
    cmds = group(
        subparsers,
        "budgets",
        help="spending caps per user, team, key or overall",
        description="Spending caps on a scope (user:NAME, team:NAME, key:ID or global) over "
        "a calendar window, in USD or tokens, that alert at thresholds and may be enforced "
        "(calls refused with 429 once reached). Works on the database, or on a running "
        "proxy through its admin API with --url (then --database is ignored).",
    )
    p = command(
        cmds,
        "set",
        cmd_budgets_set,
        help="create a budget, or replace one with --id",
        description="Create a budget, or replace every setting of budget --id.",
    )
    p.add_argument("--id", type=int, help="replace this budget instead of creating one")
    p.add_argument("--scope", required=True, help="user:NAME, team:NAME, key:ID or global")
    limit = p.add_mutually_exclusive_group(required=True)
    limit.add_argument("--limit-usd", help="limit in US dollars, e.g. 25.50")
    limit.add_argument("--limit-tokens", type=int, help="limit in tokens")
    p.add_argument(
        "--category",
        help="count one category only: input, cached, intermediate, output or thinking "
        "(tokens or USD), or grounding (USD) (default: all)",
    )
    p.add_argument(
        "--window",
        required=True,
        choices=[w.value for w in Window],
        help="calendar window the limit applies to; total never resets",
    )
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the calendar")
    p.add_argument(
        "--mode",
        required=True,
        choices=("alert", "enforce"),
        help="alert: notify only; enforce: also refuse calls once the limit is reached",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        default=["0.5", "0.8", "1"],
        metavar="FRACTION",
        help="alert when spend reaches these fractions of the limit, ascending, each in (0, 1]",
    )
    p.add_argument(
        "--webhook", help="URL alerts are posted to (https, or http to loopback) (default: none)"
    )
    p.add_argument(
        "--webhook-format", choices=("json", "slack"), default="json", help="alert payload"
    )
    _database_flag(p)

    p = command(cmds, "list", cmd_budgets_list, help="list every budget")
    p.add_argument("--format", choices=_FORMATS, default="table", help="output format")
    _database_flag(p)

    p = command(
        cmds,
        "status",
        cmd_budgets_status,
        help="spend of every budget in its current window, against its limit",
    )
    p.add_argument("--format", choices=_FORMATS, default="table", help="output format")
    _database_flag(p)

    p = command(cmds, "delete", cmd_budgets_delete, help="delete a budget by id")
    p.add_argument("id", type=int, help="the budget's id, as `budgets list` shows it")
    _database_flag(p)


def _local(args: argparse.Namespace, work: Any) -> Any:
    from .common import _ensure_schema, _settings, _with_session

    settings = _settings(args)
    _ensure_schema(settings)
    secret = settings.secret_bytes()
    return asyncio.run(_with_session(settings, lambda s: work(s, secret)))


def _spec(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from ..budgets.model import BudgetSpec
    from ..errors import ConfigError

    values = {
        "scope": args.scope,
        "limit_usd": args.limit_usd,
        "limit_tokens": args.limit_tokens,
        "category": args.category,
        "window": args.window,
        "timezone": args.timezone,
        "thresholds": args.thresholds,
        "mode": args.mode,
        "webhook": args.webhook,
        "webhook_format": args.webhook_format,
    }
    try:
        return BudgetSpec.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            if not field:  # a rule across fields names them itself: spell them as flags
                for name, flag in FLAGS.items():
                    message = message.replace(name, flag)
            problems.append(f"{FLAGS.get(field, field)}: {message}" if field else message)
        raise ConfigError("; ".join(problems)) from None


# ------------------------------------------------------------------------ commands


def cmd_budgets_set(args: argparse.Namespace) -> int:
    from ..budgets.model import Budget
    from ..errors import ConfigError

    spec = _spec(args)
    target = remote_target(args)
    if target is not None:
        body = spec.model_dump(mode="json")
        if args.id is None:
            budget = Budget.model_validate(admin_call(target, "POST", "/admin/v1/budgets", body))
        else:
            budget = Budget.model_validate(
                admin_call(target, "PUT", f"/admin/v1/budgets/{args.id}", body)
            )
    else:
        from ..storage import budgets

        async def work(session: Any, secret: bytes) -> Budget | None:
            if args.id is None:
                return budgets.budget_view(await budgets.create_budget(session, secret, spec))
            row = await budgets.update_budget(session, secret, args.id, spec)
            return budgets.budget_view(row) if row is not None else None

        found = _local(args, work)
        if found is None:
            raise ConfigError(f"no budget with id {args.id}")
        budget = found
    print(f"budget {budget.id} {'created' if args.id is None else 'updated'}")
    _print_budgets([budget], "table")
    return 0


def _budget_row(b: Budget) -> dict[str, object]:
    limit = f"{_plain(b.limit_usd)} USD" if b.limit_usd is not None else f"{b.limit_tokens} tokens"
    return {
        "id": b.id,
        "scope": b.scope,
        "limit": limit,
        "category": b.category,
        "window": b.window.value,
        "timezone": b.timezone,
        "thresholds": " ".join(_plain(t) for t in b.thresholds),
        "mode": b.mode.value,
        "webhook": b.webhook_format.value if b.webhook_configured else None,
    }


def _plain(value: Any) -> str:
    return format(value.normalize(), "f")


def _print_budgets(items: list[Budget], fmt: str) -> None:
    from .format import render

    if fmt == "json":
        import json

        print(json.dumps([b.model_dump(mode="json") for b in items], indent=2))
        return
    print(render([_budget_row(b) for b in items], LIST_COLUMNS, fmt))


def cmd_budgets_list(args: argparse.Namespace) -> int:
    from ..budgets.model import Budget

    target = remote_target(args)
    if target is not None:
        answer = admin_call(target, "GET", "/admin/v1/budgets")
        items = [Budget.model_validate(b) for b in answer["budgets"]]
    else:
        from ..storage import budgets

        async def work(session: Any, secret: bytes) -> list[Budget]:
            return [budgets.budget_view(r) for r in await budgets.list_budgets(session)]

        items = _local(args, work)
    _print_budgets(items, args.format)
    return 0


def cmd_budgets_status(args: argparse.Namespace) -> int:
    from ..budgets.model import BudgetStatus
    from .format import render

    target = remote_target(args)
    if target is not None:
        answer = admin_call(target, "GET", "/admin/v1/budgets/status")
        statuses = [BudgetStatus.model_validate(s) for s in answer["statuses"]]
    else:
        from ..storage import budgets
        from ..storage.schema import utcnow

        async def work(session: Any, secret: bytes) -> list[BudgetStatus]:
            now = utcnow()
            return [
                await budgets.budget_status(session, row, now)
                for row in await budgets.list_budgets(session)
            ]

        statuses = _local(args, work)
    if args.format == "json":
        import json

        print(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
        return 0
    print(render([_status_row(s) for s in statuses], STATUS_COLUMNS, args.format))
    return 0


def _status_row(s: BudgetStatus) -> dict[str, object]:
    unit = " USD" if s.unit == "usd" else " tokens"
    return {
        "id": s.budget.id,
        "scope": s.budget.scope,
        "window": s.budget.window.value,
        "spend": _plain(s.spend) + unit,
        "limit": _plain(s.limit) + unit,
        "ratio": _plain(s.ratio),
        "window_start": s.window_start,
        "resets_at": s.resets_at,
        "exceeded": "yes" if s.exceeded else "no",
    }


def cmd_budgets_delete(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        from .remote import RemoteError

        try:
            admin_call(target, "DELETE", f"/admin/v1/budgets/{args.id}")
        except RemoteError as exc:
            if "(404)" not in str(exc):
                raise
            done = False
        else:
            done = True
    else:
        from ..storage import budgets

        async def work(session: Any, secret: bytes) -> bool:
            return await budgets.delete_budget(session, args.id)

        done = _local(args, work)
    if not done:
        print(f"no budget with id {args.id}", file=sys.stderr)
        return 1
    print(f"budget {args.id} deleted")
    return 0
