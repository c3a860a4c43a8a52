"""Gemini Meter: a cost and token accounting proxy for the Gemini API.

The public surface is small: build ``Settings``, pass them to ``create_app``,
and run the app with aiohttp (or use the ``gemini-meter`` command). The shapes
a call leaves behind are ``Usage``, ``Cost``, ``Principal`` and
``UsageRecord``; ``load_catalog`` and ``price`` price a usage the way the proxy
does. Names are imported on first use, so ``import proxy.metering.parsers`` (or
a quick CLI command) does not pull in the whole server.

The package is laid out by concern, in the order a request meets them:
``server`` (the HTTP edge), ``metering`` (usage out of responses),
``pricing`` (what it costs), ``storage`` (where records end up); beside them
``emulator`` (a local Gemini stand-in) and ``cli`` (the ``gemini-meter``
command). ``docs/architecture.md`` draws the path.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metering.records import Cost, Principal, Usage, UsageRecord
    from .pricing import Catalog, load_catalog, price
    from .server.app import create_app
    from .settings import Settings

__all__ = [
    "Catalog",
    "Cost",
    "Principal",
    "Settings",
    "Usage",
    "UsageRecord",
    "create_app",
    "load_catalog",
    "price",
]
__version__ = "0.1.0"

_HOMES = {
    "create_app": ".server.app",
    "Cost": ".metering.records",
    "Principal": ".metering.records",
    "Usage": ".metering.records",
    "UsageRecord": ".metering.records",
    "Catalog": ".pricing",
    "load_catalog": ".pricing",
    "price": ".pricing",
    "Settings": ".settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home, __name__), name)
