"""``gemini-meter db upgrade|downgrade``: move the schema to a revision with Alembic."""

from __future__ import annotations

import argparse

from .common import Subparsers, _existing_database, _settings, command, database_flag, group


def register(subparsers: Subparsers) -> None:
    db = group(
        subparsers,
        "db",
        help="create or migrate the database schema",
        description="Move the database schema to a revision with Alembic. The embedded SQLite "
        "default upgrades itself; run `db upgrade` on PostgreSQL before each deploy.",
    )
    p = command(db, "upgrade", cmd_db_upgrade, help="apply migrations (creates the database)")
    p.add_argument("--revision", default="head", help="the revision to upgrade to")
    database_flag(p)
    p = command(db, "downgrade", cmd_db_downgrade, help="revert migrations down to REVISION")
    p.add_argument("revision", help="the revision to keep; `base` drops every table")
    database_flag(p)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ..storage import migrate as _migrate

    settings = _settings(args)
    _migrate.upgrade(settings.database_url, args.revision)
    print(f"database at revision {_migrate.current(settings.database_url)}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from ..storage import migrate as _migrate

    settings = _settings(args)
    _existing_database(settings)
    _migrate.downgrade(settings.database_url, args.revision)
    print(f"database at revision {_migrate.current(settings.database_url)}")
    return 0
