"""What a usage costs: the dated price catalog and the exact-decimal cost engine.

In the data path this sits between metering and storage: ``metering.recorder``
prices each finished record with ``price`` before queueing it for the writer.

``catalog`` loads and validates ``prices.toml`` (and a user file over it) into
a ``Catalog``; ``cost.price`` turns a ``Usage`` into an exact ``Cost`` with it;
``display`` formats costs and catalog rows for the CLI; ``reprice`` revisits
stored records after a catalog change (it needs the database, so it is not
imported here).
"""

from .catalog import Catalog, GroundingFee, LongContext, ModelPrices, Rates, load_catalog
from .cost import price
from .display import catalog_rows, cost_to_json, format_usd

__all__ = [
    "Catalog",
    "GroundingFee",
    "LongContext",
    "ModelPrices",
    "Rates",
    "catalog_rows",
    "cost_to_json",
    "format_usd",
    "load_catalog",
    "price",
]
