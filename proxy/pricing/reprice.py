"""``gemini-meter reprice``: recompute stored costs with the catalog in force.

After a catalog change (a corrected rate, a new model, a user override) the
stored costs are recomputed from the stored token breakdown through the same
``price`` function the proxy uses. Only records whose cost or catalog version
differ are written, so a second run changes nothing: it is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..metering.records import Cost
from ..storage.reports import records_for_repricing, update_record_costs
from ..storage.schema import quantize_money
from .catalog import Catalog
from .cost import price

_PARTS = ("total", "input", "cached", "intermediate", "output", "thinking", "grounding")


def as_stored(cost: Cost) -> Cost:
    """``cost`` with every amount rounded as the database stores it."""
    amounts = {
        name: None if getattr(cost, name) is None else quantize_money(getattr(cost, name))
        for name in _PARTS
    }
    return Cost(catalog_version=cost.catalog_version, **amounts)


@dataclass
class RepriceResult:
    examined: int = 0
    changed: int = 0  # the amount changed
    restamped: int = 0  # same amounts, a newer catalog version
    newly_priced: int = 0
    now_unpriced: int = 0
    delta_usd: Decimal = Decimal(0)
    delta_by_model: dict[str, Decimal] = field(default_factory=dict)
    catalog_version: str = ""

    def describe(self) -> str:
        lines = [
            f"catalog {self.catalog_version}: examined {self.examined} records, "
            f"{self.changed} changed cost, {self.restamped} restamped with the catalog version, "
            f"{self.newly_priced} newly priced, {self.now_unpriced} now unpriced",
            f"total change: {self.delta_usd:+f} USD",
        ]
        for model, delta in sorted(self.delta_by_model.items()):
            lines.append(f"  {model}: {delta:+f} USD")
        return "\n".join(lines)


async def reprice(
    sessionmaker: async_sessionmaker[AsyncSession],
    catalog: Catalog,
    *,
    since: datetime | None = None,
    model: str | None = None,
) -> RepriceResult:
    """Recompute and store the costs of records made since ``since`` (of ``model``)."""
    result = RepriceResult(catalog_version=catalog.version)
    async with sessionmaker() as session:
        async for batch in records_for_repricing(session, since, model):
            updates: list[tuple[int, Cost]] = []
            for row in batch:
                result.examined += 1
                new = as_stored(
                    price(
                        catalog,
                        row.model,
                        row.usage,
                        service_tier=row.effective_service_tier or row.requested_service_tier,
                        at=row.created_at,
                    )
                )
                old = row.cost
                if new == old:
                    continue
                updates.append((row.id, new))
                if new.total == old.total:
                    result.restamped += 1
                    continue
                result.changed += 1
                if old.total is None:
                    result.newly_priced += 1
                if new.total is None:
                    result.now_unpriced += 1
                delta = (new.total or Decimal(0)) - (old.total or Decimal(0))
                result.delta_usd += delta
                name = row.model or "(none)"
                result.delta_by_model[name] = result.delta_by_model.get(name, Decimal(0)) + delta
            await update_record_costs(session, updates)
            await session.commit()
    return result
