"""``gemini-meter db upgrade|downgrade``: move the schema to a revision with Alembic."""

from __future__ import annotations

import argparse

from ..storage import migrate as _migrate
from .common import _settings


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _migrate.upgrade(settings.database_url, args.revision)
    print(f"database at revision {_migrate.current(settings.database_url)}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _migrate.downgrade(settings.database_url, args.revision)
    print(f"database at revision {_migrate.current(settings.database_url)}")
    return 0
