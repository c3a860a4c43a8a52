"""What every command shares: settings from flags, a database session, the schema check.

Every command builds its ``Settings`` from its flags on top of the environment
(``GEMINI_METER_*``) and the TOML file named by ``--config`` or
``GEMINI_METER_CONFIG`` (``_settings``); commands that touch the database open one
short-lived engine and session (``_with_session``) and, on the embedded SQLite default,
bring the schema up to date first (``_ensure_schema``).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import ConfigError
from ..settings import Settings, load_settings
from ..storage import migrate as _migrate
from ..storage.schema import make_engine


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    config: Path | None = getattr(args, "config", None)
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    flags.setdefault("database_url", getattr(args, "database", None))
    previous = os.environ.get("GEMINI_METER_CONFIG")
    if config is not None:
        os.environ["GEMINI_METER_CONFIG"] = str(config)
    try:
        return load_settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file is not valid TOML: {exc}") from exc
    finally:
        # The file applies to this command only, not to whatever runs next in the process.
        if config is not None:
            if previous is None:
                os.environ.pop("GEMINI_METER_CONFIG", None)
            else:
                os.environ["GEMINI_METER_CONFIG"] = previous


async def _with_session(settings: Settings, work: Callable[[AsyncSession], Any]) -> Any:
    engine = make_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def _ensure_schema(settings: Settings) -> None:
    """The embedded SQLite default upgrades itself; PostgreSQL is upgraded deliberately."""
    if settings.is_sqlite:
        _migrate.upgrade(settings.database_url)
