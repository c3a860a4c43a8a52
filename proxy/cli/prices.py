"""``gemini-meter price|prices|reprice``: price a usage, show the catalog, reprice records.

``reprice`` needs the database and imports its module only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from ..errors import ConfigError
from ..metering.parsers import UsageParseError, usage_from_any
from ..pricing import Catalog, catalog_rows, cost_to_json, load_catalog, price
from ..storage.schema import make_engine
from .common import _ensure_schema, _settings
from .format import render


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
