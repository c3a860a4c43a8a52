"""``gemini-meter``: serve the proxy, manage keys, report usage, price, emulate, demo.

Every command builds its ``Settings`` from its flags on top of the environment
(``GEMINI_METER_*``) and the TOML file named by ``--config`` or
``GEMINI_METER_CONFIG``. Commands print results on stdout and diagnostics on
stderr; a failure exits non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from alembic.util import CommandError as AlembicCommandError
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import ConfigError, GeminiMeterError
from ..metering.parsers import UsageParseError, usage_from_any
from ..pricing.catalog import Catalog, catalog_rows, cost_to_json, load_catalog, price
from ..settings import Settings, load_settings
from ..storage import accounts, reports
from ..storage import migrate as _migrate
from ..storage.schema import make_engine
from .format import FORMATS, render

log = logging.getLogger("gemini_meter")

# The report's columns: the token categories, then the cost and its split.
REPORT_COLUMNS = ("requests", *reports.TOKEN_COLUMNS, *reports.COST_COLUMNS)


class AccessLogger(AbstractAccessLogger):
    """Method, path, status and time: never the query string, which may carry a key."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    config: Path | None = getattr(args, "config", None)
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    flags.setdefault("database_url", getattr(args, "database", None))
    previous = os.environ.get("GEMINI_METER_CONFIG")
    if config is not None:
        os.environ["GEMINI_METER_CONFIG"] = str(config)
    try:
        return load_settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file is not valid TOML: {exc}") from exc
    finally:
        # The file applies to this command only, not to whatever runs next in the process.
        if config is not None:
            if previous is None:
                os.environ.pop("GEMINI_METER_CONFIG", None)
            else:
                os.environ["GEMINI_METER_CONFIG"] = previous


async def _with_session(settings: Settings, work: Callable[[AsyncSession], Any]) -> Any:
    engine = make_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def _ensure_schema(settings: Settings) -> None:
    """The embedded SQLite default upgrades itself; PostgreSQL is upgraded deliberately."""
    if settings.is_sqlite:
        _migrate.upgrade(settings.database_url)


# --- serve ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.run import serve

    settings = _settings(args, host=args.host, port=args.port, upstream=args.upstream)
    serve(settings, access_log_class=AccessLogger)
    return 0


# --- db --------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _migrate.upgrade(settings.database_url, args.revision)
    print(f"database at revision {_migrate.current(settings.database_url)}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _migrate.downgrade(settings.database_url, args.revision)
    print(f"database at revision {_migrate.current(settings.database_url)}")
    return 0


# --- keys ------------------------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    secret = settings.secret_bytes()
    info, key = asyncio.run(
        _with_session(settings, lambda s: accounts.create_key(s, secret, args.user, args.team))
    )
    print(f"key id {info.id} for user {info.user}" + (f" (team {info.team})" if info.team else ""))
    print("The key is shown once; store it now.", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    keys = asyncio.run(_with_session(settings, accounts.list_keys))
    rows = [
        {
            "id": k.id,
            "label": k.label,
            "user": k.user,
            "team": k.team,
            "created_at": k.created_at,
            "revoked_at": k.revoked_at,
        }
        for k in keys
    ]
    print(render(rows, ["id", "label", "user", "team", "created_at", "revoked_at"], args.format))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    done = asyncio.run(_with_session(settings, lambda s: accounts.revoke_key(s, args.id)))
    if not done:
        print(f"no active key with id {args.id}", file=sys.stderr)
        return 1
    print(f"key {args.id} revoked")
    return 0


# --- usage -----------------------------------------------------------------------------


def _when(value: str) -> datetime:
    """An ISO date or date-time; naive values are UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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


# --- pricing ---------------------------------------------------------------------------


def _catalog(args: argparse.Namespace) -> Catalog:
    settings = _settings(args)
    return load_catalog(settings.price_catalog)


def cmd_price(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    try:
        raw = json.loads(args.usage)
    except ValueError as exc:
        raise ConfigError(f"--usage is not JSON: {exc}") from exc
    try:
        usage = usage_from_any(raw)
    except UsageParseError as exc:
        raise ConfigError(f"--usage is not a usage object: {exc}") from exc
    cost = price(catalog, args.model, usage, service_tier=args.service_tier)
    result: dict[str, object] = {
        "model": args.model,
        "resolved_model": catalog.resolve(args.model),
        "service_tier": args.service_tier or "standard",
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "intermediate_tokens": usage.intermediate_tokens,
        "output_tokens": usage.output_tokens,
        "thinking_tokens": usage.thinking_tokens,
        "total_tokens": usage.total_tokens,
        **cost_to_json(cost),
        "catalog_version": cost.catalog_version or catalog.version,
    }
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    breakdown = result.pop("cost_breakdown_usd")
    assert isinstance(breakdown, dict)
    for name, value in result.items():
        print(f"{name:22} {'-' if value is None else value}")
    for name, value in breakdown.items():
        print(f"{'cost_' + name + '_usd':22} {value}")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    rows = catalog_rows(catalog, args.model)
    if args.model and not rows:
        print(f"no catalog entry for model {args.model!r}", file=sys.stderr)
        return 1
    columns = list(rows[0]) if rows else ["model"]
    if args.format == "json":
        print(json.dumps({"version": catalog.version, "entries": rows}, indent=2))
    else:
        print(f"price catalog {catalog.version} (USD per 1M tokens)")
        print(render(rows, columns, args.format))
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from ..pricing.reprice import reprice

    settings = _settings(args)
    _ensure_schema(settings)
    catalog = load_catalog(settings.price_catalog)
    engine = make_engine(settings.database_url)

    async def run() -> Any:
        try:
            return await reprice(
                async_sessionmaker(engine, expire_on_commit=False),
                catalog,
                since=args.since,
                model=args.model,
            )
        finally:
            await engine.dispose()

    result = asyncio.run(run())
    print(result.describe())
    return 0


# --- emulator and demo -------------------------------------------------------------------


def cmd_emulate(args: argparse.Namespace) -> int:
    from ..emulator.server import EmulatorConfig, run_emulator

    config = EmulatorConfig(
        latency_seconds=args.latency_ms / 1000,
        chunk_delay_seconds=args.chunk_delay_ms / 1000,
        background_seconds=args.background_seconds,
    )
    print(f"Gemini emulator on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        asyncio.run(run_emulator(args.host, args.port, config))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.log_level is None:
        # The demo's output is its report; library chatter would bury it.
        logging.getLogger().setLevel(logging.WARNING)

    return asyncio.run(run_demo(Path(args.dir) if args.dir else None))


# --- parser ----------------------------------------------------------------------------


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
