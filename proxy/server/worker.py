"""The entry point of a worker process of ``serve --workers N`` (see ``server.run``).

A worker is a fresh interpreter (multiprocessing's spawn) that imports the module of its
target when it unpickles it. That target is ``main`` here, which imports nothing heavy:
the cyclic garbage collector is paused before aiohttp, SQLAlchemy and the server load,
as ``cli.serve`` pauses it for a single process, and ``server.run`` turns it back on once
the worker listens.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings
    from .run import AccessLog


def main(settings: Settings, index: int, access_log: AccessLog | None, level: int) -> None:
    """Worker ``index``: the proxy on the shared port, its metrics on ``metrics_port + index``."""
    gc.disable()
    from .run import _worker

    _worker(settings, index, access_log, level)
