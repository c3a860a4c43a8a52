"""Shared fixtures: real databases, both of them.

- ``database_url``: an empty database, parametrized over ``sqlite`` (a file in
  ``tmp_path``) and ``postgresql`` (a database made for this test session on the
  server at ``GEMINI_METER_TEST_PG_URL``, default
  ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``; its ``public``
  schema is recreated for every test). An unreachable PostgreSQL fails the
  tests that need it: it is never a reason to skip. ``-m "not postgresql"``
  deselects those tests on purpose.
- ``postgres_url``: the PostgreSQL one alone, for PostgreSQL-only tests.
- ``migrated_url``: the same database upgraded to the newest migration. The migrations
  run once per test session (per xdist worker), into a template: an SQLite file each
  test gets a copy of (SQLite's backup API), and a PostgreSQL database whose
  ``pg_dump`` (schema and rows) each test replays into its emptied ``public`` schema.
  Both are what the migrations made, byte for byte and object for object, for a
  fraction of their cost (migrating took about 0.3 s a test, a thousand tests; a copy
  takes milliseconds, a replay 0.12 s). ``tests/storage/test_migrate.py`` runs the
  migrations themselves.
- ``engine`` / ``sessionmaker``: ``proxy.storage.schema`` objects on ``migrated_url``,
  disposed after the test.
- ``make_record``: a factory of plausible ``UsageRecord`` values.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from proxy.metering.records import Cost, EndpointKind, Principal, Usage, UsageRecord
from proxy.storage.migrate import upgrade_async
from proxy.storage.schema import make_engine, make_sessionmaker

PG_SERVER_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs the PostgreSQL test server")


def _pg_server_url() -> URL:
    return make_url(os.environ.get("GEMINI_METER_TEST_PG_URL", PG_SERVER_DEFAULT))


def run_in_thread(coro_fn: Any, *args: Any) -> Any:
    """Run ``coro_fn(*args)`` on a private loop in a worker thread.

    Session-scoped set-up runs outside the tests' loops; ``asyncio.run`` on the
    main thread would replace the loop pytest-asyncio manages.
    """
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coro_fn(*args)).result()


async def _pg_admin(server: URL, *statements: str) -> None:
    engine = create_async_engine(server, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    server = _pg_server_url()
    name = f"gemini_meter_test_{uuid.uuid4().hex[:12]}"
    try:
        run_in_thread(_pg_admin, server, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is unreachable at {server.render_as_string(hide_password=True)} "
            f"({exc!r}). Start it, or point GEMINI_METER_TEST_PG_URL at a server.",
            pytrace=False,
        )
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        run_in_thread(_pg_admin, server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _reset_pg_schema(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    """An empty PostgreSQL database (for tests about PostgreSQL alone)."""
    await _reset_pg_schema(postgres_database)
    return postgres_database


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty database of each kind; the URL is what ``Settings.database_url`` takes."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gemini-meter.db'}"
    url: str = request.getfixturevalue("postgres_database")
    await _reset_pg_schema(url)
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file the migrations upgraded to the newest one, once per session."""
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    run_in_thread(upgrade_async, f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_database: str) -> str | None:
    """The session database upgraded to the newest migration, as SQL statements that
    make it again (``pg_dump``'s, its psql meta-commands left out; rows as INSERTs);
    None without ``pg_dump``, and each test then runs the migrations itself."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        return None
    run_in_thread(_reset_pg_schema, postgres_database)
    run_in_thread(upgrade_async, postgres_database)
    url = make_url(postgres_database)
    dumped = subprocess.run(
        [pg_dump, "--no-owner", "--no-privileges", "--inserts", "--dbname", url.database or ""],
        env={
            **os.environ,
            "PGHOST": url.host or "127.0.0.1",
            "PGPORT": str(url.port or 5432),
            "PGUSER": url.username or "postgres",
            **({"PGPASSWORD": url.password} if url.password else {}),
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(line for line in dumped.splitlines() if not line.startswith("\\"))


async def _replay_pg(url: str, statements: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            # asyncpg's own execute: several statements in one simple query
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            # The schema emptied again: making the template (at the first test) used it.
            await driver.execute(
                f"DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public; {statements}"
            )
    finally:
        await engine.dispose()


@pytest.fixture
async def migrated_url(database_url: str, request: pytest.FixtureRequest) -> str:
    """``database_url`` upgraded to the newest migration (a copy of the session's
    template, see the module's docstring)."""
    if database_url.startswith("sqlite"):
        template: Path = request.getfixturevalue("sqlite_template")
        path = make_url(database_url).database
        assert path is not None
        with closing(sqlite3.connect(template)) as source:
            with closing(sqlite3.connect(path)) as target:
                source.backup(target)
        return database_url
    statements: str | None = request.getfixturevalue("postgres_template")
    if statements is None:
        await upgrade_async(database_url)
    else:
        await _replay_pg(database_url, statements)
    return database_url


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(migrated_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
def db_kind(database_url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``, for the few assertions that differ."""
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


def _make_record(principal: Principal, **overrides: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "created_at": datetime.now(UTC),
        "principal": principal,
        "model": "gemini-2.5-flash",
        "endpoint": EndpointKind.GENERATE_CONTENT,
        "streamed": False,
        "upstream_status": 200,
        "latency_seconds": 0.25,
        "ttfb_seconds": 0.1,
        "usage": Usage(input_tokens=10, output_tokens=5, total_tokens=15),
        "cost": Cost(
            total=Decimal("0.000015"),
            input=Decimal("0.000003"),
            output=Decimal("0.000012"),
            catalog_version="test",
        ),
    }
    values.update(overrides)
    return UsageRecord(**values)


@pytest.fixture
def make_record() -> Callable[..., UsageRecord]:
    """``make_record(principal, **overrides)``: a plausible priced ``UsageRecord``."""
    return _make_record


# The end-to-end stack (emulator, proxy, keys, SDK clients), shared by the proxy tests.
from tests.factories import (  # noqa: E402, F401
    make_stack,
    proxy_server,
    recording_upstream,
    stack,
    tls,
    tls_proxy_server,
)
