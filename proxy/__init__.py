"""Gemini Meter: a cost and token accounting proxy for the Gemini API.

The public surface is small: build ``Settings``, pass them to ``create_app``,
and run the app with aiohttp (or use the ``gemini-meter`` command). Names are
imported on first use, so ``import proxy.metering.parsers`` (or a quick CLI command)
does not pull in the whole server.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metering.records import Cost, Principal, Usage, UsageRecord
    from .server.app import create_app
    from .settings import Settings

__all__ = ["Cost", "Principal", "Settings", "Usage", "UsageRecord", "create_app"]
__version__ = "0.1.0"

_HOMES = {
    "create_app": ".server.app",
    "Cost": ".metering.records",
    "Principal": ".metering.records",
    "Usage": ".metering.records",
    "UsageRecord": ".metering.records",
    "Settings": ".settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home, __name__), name)
