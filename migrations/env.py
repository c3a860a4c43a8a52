"""Alembic environment (async template) for the Gemini Meter schema.

Where the database URL comes from, first match wins:

1. ``config.attributes["database_url"]``: set by ``proxy.storage.migrate``, which is
   how ``gemini-meter migrate`` and ``serve`` run migrations;
2. ``sqlalchemy.url`` in the Alembic config, if someone sets one;
3. ``GEMINI_METER_DATABASE_URL``, then the project settings (``GEMINI_METER_CONFIG``
   TOML file, defaults): for developers running ``alembic`` by hand.

``target_metadata`` is the models' metadata, so ``alembic revision
--autogenerate`` diffs against ``proxy.storage.schema``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from proxy.storage.schema import Base

config = context.config

# Only when run from the command line with alembic.ini: code that calls
# proxy.storage.migrate keeps its own logging configuration.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Serialises concurrent upgrades of one PostgreSQL database (several proxy
# replicas starting at once): an arbitrary, fixed advisory lock id.
_PG_MIGRATION_LOCK = 0x67_6D_6D_69_67  # "gmmig"


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    url = os.environ.get("GEMINI_METER_DATABASE_URL")
    if url:
        return url
    from proxy.settings import load_settings

    return load_settings().database_url


def run_migrations_offline() -> None:
    """Emit the SQL (``alembic upgrade --sql``) instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        render_as_batch=url.startswith("sqlite"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later migrations recreate tables.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held to the end of the migration transaction; a second upgrader
            # waits, then finds the schema already at head.
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
        context.run_migrations()


async def run_async_migrations() -> None:
    connectable = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with connectable.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await connectable.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
