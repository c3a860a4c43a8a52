"""Alembic migrations run from code: ``gemini-meter db`` and ``serve`` use this.

The Alembic configuration is built here rather than read from ``alembic.ini``
(which exists only for developers running ``alembic`` by hand), and the
database URL is handed to ``migrations/env.py`` through ``Config.attributes``,
so no file or environment variable is needed at run time.

The scripts are found next to the package when installed from a wheel
(pyproject force-includes ``migrations/`` as ``proxy/storage/_migrations``), else in the
repository's top-level ``migrations/``.

Alembic's async ``env.py`` runs its own event loop (``asyncio.run``), so the
sync functions must not be called from a running loop; ``upgrade_async`` runs
the upgrade in a worker thread for ``serve``, which migrates an SQLite database
by itself at start-up.

Importing Alembic costs a good part of the proxy's start-up, so it is imported only
when a migration runs: ``serve`` first reads the database's revision with one query
(``at_head``) and compares it with ``HEAD``, which a test keeps equal to the scripts' head.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD",
    "alembic_config",
    "at_head",
    "current",
    "current_async",
    "downgrade",
    "head",
    "script_location",
    "upgrade",
    "upgrade_async",
]


# Alembic's ``context`` and ``op`` are module-level proxies: two migrations
# running at once in one process (threads) would overwrite each other's.
# Across processes, env.py serialises PostgreSQL upgrades with an advisory lock.
_alembic_lock = threading.Lock()

# The newest revision in migrations/versions (tests/storage/test_migrate.py checks it).
HEAD = "0005"


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``."""
    packaged = Path(__file__).resolve().parent / "_migrations"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[2] / "migrations"
    if source.is_dir():
        return source
    raise FileNotFoundError(f"no migration scripts at {packaged} or {source}")


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` for ``url``, built without ``alembic.ini``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    # Passed as an attribute, not "sqlalchemy.url": ConfigParser would try to
    # interpolate the "%" of a percent-encoded password.
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision``. Not from a running loop."""
    from alembic import command

    with _alembic_lock:
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``"base"``: drop everything)."""
    from alembic import command

    with _alembic_lock:
        command.downgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    """``upgrade`` from inside a running event loop (in a worker thread)."""
    await asyncio.to_thread(upgrade, url, revision)


def head() -> str | None:
    """The newest revision the scripts define."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the database is at ``HEAD``, in one query and without importing Alembic."""
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in result] == [HEAD]
    except (OperationalError, ProgrammingError):  # no alembic_version table yet
        return False


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_async(url: str) -> str | None:
    """The revision the database at ``url`` is at; None when it was never migrated."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current_revision)
    finally:
        await engine.dispose()


def current(url: str) -> str | None:
    """``current_async`` for the CLI. Not from a running loop."""
    return asyncio.run(current_async(url))
