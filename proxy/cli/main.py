"""``gemini-meter``: serve the proxy, manage keys, users and teams, report usage, price, emulate.

This module assembles the parser and runs the chosen command. Each command group lives
in its own module with a ``register(subparsers)`` that adds its commands (``serve``,
``db``, ``keys``, ``users`` with ``teams``, ``usage``, ``prices``, ``emulate`` with the
demo); a new group is one more module in ``COMMAND_MODULES``. What they share (the
parser helpers, settings from flags, a database session) is in ``common``.

Nothing heavy is imported to parse: ``--help`` answers without loading aiohttp,
SQLAlchemy or pydantic. Commands print results on stdout and diagnostics on stderr; a
failure exits non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import GeminiMeterError
from . import budgets, db, emulate, keys, prices, serve, usage, users
from .common import HelpFormatter, global_options

# Each registers its commands on the top-level parser, in the order `--help` lists them.
COMMAND_MODULES = (serve, keys, users, budgets, usage, prices, db, emulate)

DESCRIPTION = """\
Cost and token accounting proxy for the Gemini API.

Try it offline, with the local Gemini emulator:
  gemini-meter emulate --port 8001
  GEMINI_METER_AUTH_MODE=passthrough gemini-meter serve --upstream http://127.0.0.1:8001
  curl http://127.0.0.1:8080/v1beta/models/gemini-2.5-flash:generateContent \\
    -H 'x-goog-api-key: any' -H 'Content-Type: application/json' \\
    -d '{"contents": [{"parts": [{"text": "Hi"}]}]}'

Every setting is also read from GEMINI_METER_<NAME> and from the --config file.
Run `gemini-meter COMMAND --help` for a command's flags."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemini-meter", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    parser.set_defaults(func=lambda args: _print_help(parser))
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def configure_logging(level_name: str | None) -> None:
    level = (level_name or os.environ.get("GEMINI_METER_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "DEBUG":
        # Alembic narrates every migration step at INFO; the command says what it did.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        code: int = args.func(args)
    except GeminiMeterError as exc:
        print(f"gemini-meter: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        reason = _database_failure(exc)
        if reason is None:
            raise
        print(f"gemini-meter: {reason}", file=sys.stderr)
        return 2
    return code


def _database_failure(exc: Exception) -> str | None:
    """One line for a database or migration failure (connection refused, no such
    directory, bad credentials), or None for anything else. The libraries are
    looked up, not imported: a command that never loaded them cannot have raised
    their errors."""
    dbapi = getattr(sys.modules.get("sqlalchemy.exc"), "DBAPIError", None)
    if dbapi is not None and isinstance(exc, dbapi):
        # DBAPIError's text holds the statement, so only its cause is shown.
        return f"the database could not be used: {exc.orig}"
    if isinstance(exc, OSError):
        return f"the database could not be used: {exc}"
    alembic_error = getattr(sys.modules.get("alembic.util.exc"), "CommandError", None)
    if alembic_error is not None and isinstance(exc, alembic_error):
        return f"migration: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
