"""``gemini-meter price|prices|reprice``: price a usage, show the catalog, reprice records.

The pricing package is light; ``reprice`` needs the database and imports it only when it
runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .common import Subparsers, _ensure_schema, _settings, command, database_flag
from .format import FORMATS, render
from .usage import _when

if TYPE_CHECKING:
    from ..pricing import Catalog

SERVICE_TIERS = ("standard", "flex", "priority", "batch", "deferred")


def register(subparsers: Subparsers) -> None:
    p = command(
        subparsers,
        "price",
        cmd_price,
        help="price a usage object with the catalog in force",
        description="Price one usage object the way the proxy prices a call.\n\n"
        "example:\n"
        "  gemini-meter price --model gemini-2.5-pro \\\n"
        '    --usage \'{"promptTokenCount": 1000, "candidatesTokenCount": 400}\'',
    )
    p.add_argument("--model", required=True, help="the model name, with or without models/")
    p.add_argument(
        "--usage",
        required=True,
        metavar="JSON",
        help="an Interactions `usage` or a generateContent `usageMetadata` object",
    )
    p.add_argument(
        "--service-tier", choices=SERVICE_TIERS, help="the tier the call ran in (default: standard)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    p = command(
        subparsers,
        "prices",
        cmd_prices,
        help="show the price catalog in force",
        description="Show the price catalog in force: the built-in one, with the user price "
        "file (GEMINI_METER_PRICE_CATALOG, see docs/pricing.md) on top.",
    )
    p.add_argument("--model", help="only this model (or alias)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")

    p = command(
        subparsers,
        "reprice",
        cmd_reprice,
        help="recompute stored costs with the catalog in force",
        description="Recompute the cost of stored records with the catalog in force, e.g. "
        "after adding a model's prices to the user price file.",
    )
    p.add_argument("--since", type=_when, help="only records from this ISO date or time on")
    p.add_argument("--model", help="only this model's records")
    database_flag(p)


def _catalog(args: argparse.Namespace) -> Catalog:
    from ..pricing import load_catalog

    settings = _settings(args)
    return load_catalog(settings.price_catalog)


def unknown_model(model: str, catalog: Catalog) -> str:
    """The line that says a model has no prices, and what to do about it."""
    return (
        f"model {model!r} is not in the price catalog ({catalog.version}); known models: "
        f"{', '.join(catalog.models())}; add it with a user price file "
        "(GEMINI_METER_PRICE_CATALOG): docs/pricing.md"
    )


def cmd_price(args: argparse.Namespace) -> int:
    from ..metering.parsers import UsageParseError, usage_from_any
    from ..metering.records import UNPRICED
    from ..pricing import cost_to_json, price

    catalog = _catalog(args)
    try:
        raw = json.loads(args.usage)
    except ValueError as exc:
        raise ConfigError(f"--usage is not JSON: {exc}") from exc
    try:
        usage = usage_from_any(raw)
    except UsageParseError as exc:
        raise ConfigError(f"--usage is not a usage object: {exc}") from exc
    known = catalog.resolve(args.model) is not None
    # An unknown model is said once, below, not also logged by the pricer.
    cost = price(catalog, args.model, usage, service_tier=args.service_tier) if known else UNPRICED
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
        # Scripts still get the tokens; the costs are null, never zero.
        print(json.dumps(result, indent=2))
    if not known:
        print(f"gemini-meter: {unknown_model(args.model, catalog)}", file=sys.stderr)
        return 1
    if args.format == "json":
        return 0
    breakdown = result.pop("cost_breakdown_usd")
    assert isinstance(breakdown, dict)
    for name, value in result.items():
        print(f"{name:22} {'-' if value is None else value}")
    for name, value in breakdown.items():
        print(f"{'cost_' + name + '_usd':22} {'-' if value is None else value}")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    from ..pricing import catalog_rows

    catalog = _catalog(args)
    rows = catalog_rows(catalog, args.model)
    if args.model and not rows:
        print(f"gemini-meter: {unknown_model(args.model, catalog)}", file=sys.stderr)
        return 1
    columns = list(rows[0]) if rows else ["model"]
    if args.format == "json":
        print(json.dumps({"version": catalog.version, "entries": rows}, indent=2))
    else:
        print(f"price catalog {catalog.version} (USD per 1M tokens)")
        print(render(rows, columns, args.format))
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from ..pricing import load_catalog
    from ..pricing.reprice import reprice
    from ..storage.schema import make_engine

    settings = _settings(args)
    _ensure_schema(settings, create=False)
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
