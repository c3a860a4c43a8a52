"""``gemini-meter``: serve the proxy, manage keys, report usage, price, emulate, demo.

This module assembles the parser and runs the chosen command; each command group lives in
its own module (``serve``, ``db``, ``keys``, ``usage``, ``prices``, ``emulate`` with the
demo), and what they share (settings from flags, a database session) in ``common``.
Commands print results on stdout and diagnostics on stderr; a failure exits non-zero with
a one-line reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from alembic.util import CommandError as AlembicCommandError
from sqlalchemy.exc import DBAPIError

from ..errors import GeminiMeterError
from ..storage import reports
from .budgets import add_budgets_parser
from .db import cmd_db_downgrade, cmd_db_upgrade
from .emulate import cmd_demo, cmd_emulate
from .format import FORMATS
from .keys import cmd_keys_create, cmd_keys_list, cmd_keys_revoke
from .prices import cmd_price, cmd_prices, cmd_reprice
from .serve import cmd_serve
from .usage import cmd_usage


def _when(value: str) -> datetime:
    """An ISO date or date-time; naive values are UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemini-meter",
        description="Cost and token accounting proxy for the Gemini API.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (GEMINI_METER_CONFIG)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database", help="database URL (GEMINI_METER_DATABASE_URL)")

    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--upstream", help="Gemini API base URL (GEMINI_METER_UPSTREAM)")
    db_flag(p)
    p.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    p = db.add_parser("upgrade", help="apply migrations")
    p.add_argument("--revision", default="head")
    db_flag(p)
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("downgrade", help="revert migrations to REVISION")
    p.add_argument("revision")
    db_flag(p)
    p.set_defaults(func=cmd_db_downgrade)

    keys = sub.add_parser("keys", help="proxy-issued keys").add_subparsers(
        dest="keys", required=True
    )
    p = keys.add_parser("create", help="issue a key; prints it alone on the last line")
    p.add_argument("--user", required=True)
    p.add_argument("--team")
    db_flag(p)
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("list", help="list keys (never the keys themselves)")
    p.add_argument("--format", choices=FORMATS, default="table")
    db_flag(p)
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id", type=int)
    db_flag(p)
    p.set_defaults(func=cmd_keys_revoke)

    add_budgets_parser(sub)

    p = sub.add_parser("usage", help="usage and cost report")
    p.add_argument("--user")
    p.add_argument("--team")
    p.add_argument("--model")
    p.add_argument("--since", type=_when, help="ISO date or time, inclusive (UTC if naive)")
    p.add_argument("--until", type=_when, help="ISO date or time, exclusive (UTC if naive)")
    p.add_argument("--group-by", nargs="+", choices=reports.GROUP_KEYS, help="default: user")
    p.add_argument("--format", choices=FORMATS, default="table")
    db_flag(p)
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser("price", help="price a usage object with the catalog in force")
    p.add_argument("--model", required=True)
    p.add_argument("--usage", required=True, help="Interactions usage or usageMetadata JSON")
    p.add_argument("--service-tier", help="standard, flex, priority, batch or deferred")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_price)

    p = sub.add_parser("prices", help="show the price catalog in force")
    p.add_argument("--model")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_prices)

    p = sub.add_parser("reprice", help="recompute stored costs with the catalog in force")
    p.add_argument("--since", type=_when)
    p.add_argument("--model")
    db_flag(p)
    p.set_defaults(func=cmd_reprice)

    p = sub.add_parser("emulate", help="run the local Gemini API emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each response")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between chunks")
    p.add_argument("--background-seconds", type=float, default=0.2)
    p.set_defaults(func=cmd_emulate)

    p = sub.add_parser("demo", help="run the seed's examples through the proxy as two users")
    p.add_argument("--dir", help="where to keep the demo database (default: a new temp dir)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (args.log_level or os.environ.get("GEMINI_METER_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        code: int = args.func(args)
    except GeminiMeterError as exc:
        print(f"gemini-meter: {exc}", file=sys.stderr)
        return 2
    except (DBAPIError, OSError) as exc:
        # Connection refused, no such directory, bad credentials: one line, no traceback.
        # DBAPIError's text holds the statement, so only its cause is shown.
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        print(f"gemini-meter: the database could not be used: {cause}", file=sys.stderr)
        return 2
    except AlembicCommandError as exc:
        print(f"gemini-meter: migration: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
