"""proxy.storage.migrate and migrations/: up and down on empty databases; models == migrations."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, Table, Text, inspect

import proxy.storage.migrate as migrate
from proxy.storage.schema import Base, make_engine

TABLES = {
    "teams",
    "users",
    "api_keys",
    "interactions",
    "usage_records",
    "usage_rollups",
    "upload_sessions",
    "budgets",
    "budget_alerts",
    "resources",
}
REPO = Path(__file__).resolve().parents[2]


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _diff(url: str, metadata: MetaData) -> list[Any]:
    def compare(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def test_upgrade_to_head_and_down_to_base(database_url):
    assert await migrate.current_async(database_url) is None
    assert await _tables(database_url) == set()

    await migrate.upgrade_async(database_url)
    assert await migrate.current_async(database_url) == migrate.head() == "0005"
    assert await _tables(database_url) == TABLES | {"alembic_version"}

    await migrate.upgrade_async(database_url)  # already at head: nothing to do
    assert await migrate.current_async(database_url) == "0005"

    await asyncio.to_thread(migrate.downgrade, database_url, "base")
    assert await migrate.current_async(database_url) is None
    assert await _tables(database_url) == {"alembic_version"}

    await migrate.upgrade_async(database_url)  # and back up again from base
    assert await _tables(database_url) == TABLES | {"alembic_version"}


async def test_models_and_migrations_agree(migrated_url):
    assert await _diff(migrated_url, Base.metadata) == []


async def test_the_comparison_would_notice_a_difference(migrated_url):
    # Guards the test above against comparing nothing.
    metadata = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    Table("extra", metadata, Column("id", Text, primary_key=True))
    metadata.tables["usage_records"].append_column(Column("surplus", Text))
    diff = await _diff(migrated_url, metadata)
    # Entries are tuples, or lists of tuples for column-level changes.
    kinds = {entry[0] if isinstance(entry, tuple) else entry[0][0] for entry in diff}
    assert kinds == {
        "add_table",
        "add_column",
    }


@pytest.mark.postgresql
async def test_concurrent_upgrades_of_postgresql(postgres_url):
    # Several replicas starting at once: separate processes, serialised by
    # env.py's advisory lock.
    code = "import sys; from proxy.storage.migrate import upgrade; upgrade(sys.argv[1])"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, postgres_url, cwd=REPO, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 60)
    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in results]
    assert await migrate.current_async(postgres_url) == "0005"
    assert await _diff(postgres_url, Base.metadata) == []


async def test_concurrent_upgrades_in_one_process(database_url):
    # Alembic's module-level proxies are not thread-safe: _migrate serialises.
    await asyncio.gather(*(migrate.upgrade_async(database_url) for _ in range(3)))
    assert await migrate.current_async(database_url) == "0005"


def test_sync_api_outside_an_event_loop(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == "0005"
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None


def test_a_password_with_percent_signs_reaches_alembic_unchanged():
    url = "postgresql+asyncpg://gm:p%40ss%25word@db.example/gm"
    config = migrate.alembic_config(url)
    assert config.attributes["database_url"] == url
    assert config.get_main_option("sqlalchemy.url") is None


def test_scripts_are_found_in_the_repository_and_in_a_wheel(tmp_path, monkeypatch):
    assert migrate.script_location() == REPO / "migrations"

    # A wheel carries the scripts as proxy/storage/_migrations (pyproject force-include).
    package = tmp_path / "site-packages" / "proxy" / "storage"
    package.mkdir(parents=True)
    shutil.copytree(REPO / "migrations", package / "_migrations")
    monkeypatch.setattr(migrate, "__file__", str(package / "migrate.py"))
    assert migrate.script_location() == package / "_migrations"
    assert migrate.head() == "0005"


def test_alembic_ini_for_developers():
    from alembic.config import Config

    config = Config(str(REPO / "alembic.ini"))
    assert config.get_main_option("script_location") == str(REPO / "migrations")
    assert config.get_main_option("sqlalchemy.url") is None  # env.py asks the settings


async def test_head_is_known_without_alembic_and_read_in_one_query(database_url):
    # HEAD is what serve compares with; it must be the scripts' head
    assert migrate.HEAD == migrate.head()
    engine = make_engine(database_url)
    try:
        assert not await migrate.at_head(engine)  # an empty database
        await migrate.upgrade_async(database_url, "0003")
        assert not await migrate.at_head(engine)  # behind
        await migrate.upgrade_async(database_url)
        assert await migrate.at_head(engine)
    finally:
        await engine.dispose()


def test_serving_imports_alembic_only_to_migrate():
    # Alembic is a good part of start-up; a database at head never needs it.
    code = "import sys, proxy.server.run, proxy.cli.main; print('alembic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
