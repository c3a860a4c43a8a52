"""What every command shares: its parser, settings from flags, a database session.

Parsing stays light: this module and every command module import nothing heavy at
the top (no aiohttp, SQLAlchemy, pydantic or prometheus-client), so ``--help`` and a
mistyped flag answer at once; each command imports what it runs inside its function.

Each command module has a ``register(subparsers)`` that adds its commands with
``command`` (one command) or ``group`` (a group of subcommands, which prints its own
help when run bare); both give the command the global options (``--config``,
``--log-level``, accepted before or after the command) and help that shows defaults.

Every command builds its ``Settings`` from its flags on top of the environment
(``GEMINI_METER_*``) and the TOML file named by ``--config`` or
``GEMINI_METER_CONFIG`` (``_settings``), and a validation error names the flag and the
variable to set, never the internal field. Commands that touch the database open one
short-lived engine and session (``_with_session``); on the embedded SQLite default the
schema is brought up to date first (``_ensure_schema``), and commands that only read
refuse a SQLite file that does not exist (``_existing_database``) rather than create
an empty one from a mistyped path.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ..settings import Problem, Settings

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction

# What `serve` prints and the README shows: how to try the proxy with no Google key.
OFFLINE_HINT = (
    "to try it offline, run `gemini-meter emulate --port 8001` and then "
    "`GEMINI_METER_AUTH_MODE=passthrough gemini-meter serve --upstream http://127.0.0.1:8001` "
    "(the README's offline recipe)"
)

# Defaults the help shows for flags whose default lives in the settings (checked
# against ``Settings`` by the tests; importing it here would load pydantic for --help).
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./gemini-meter.db"
DEFAULT_UPSTREAM = "https://generativelanguage.googleapis.com"


class HelpFormatter(argparse.HelpFormatter):
    """Prose paragraphs wrapped, indented lines (examples) kept as written, and every
    real default shown."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines[1:]):
                # A heading and its indented examples: as written.
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            "%(default)" not in help_text
            and default not in (None, False, argparse.SUPPRESS)
            and (action.option_strings or action.nargs in ("?", "*"))
        ):
            help_text += " (default: %(default)s)"
        return help_text


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--config`` and ``--log-level``, on the top parser and on every command.

    On commands their default is SUPPRESS, so a value given before the command is
    kept when none is given after it.
    """
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="TOML settings file (env GEMINI_METER_CONFIG)",
    )
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log verbosity on stderr (env GEMINI_METER_LOG_LEVEL; INFO when unset)",
    )


def _global_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    global_options(parent, suppress=True)
    return parent


_GLOBAL = _global_parent()


def command(
    subparsers: Subparsers,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add the command ``name``, run by ``func(args)``; returns its parser for its flags."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        parents=[_GLOBAL],
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def group(subparsers: Subparsers, name: str, *, help: str, description: str) -> Subparsers:
    """Add the command group ``name``; run bare, it prints its own help (exit 0)."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        parents=[_GLOBAL],
        formatter_class=HelpFormatter,
    )

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    parser.set_defaults(func=show_help)
    return parser.add_subparsers(title="commands", metavar="COMMAND", dest=f"{name}_command")


def database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="database URL, sqlite+aiosqlite:///PATH or postgresql+asyncpg://... "
        f"(env GEMINI_METER_DATABASE_URL; default: {DEFAULT_DATABASE_URL})",
    )


# ------------------------------------------------------------------------- settings

# The command-line flag that sets a field, where there is one.
_FLAGS = {
    "database_url": "--database",
    "upstream": "--upstream",
    "host": "--host",
    "port": "--port",
}


def where_to_set(field: str, args: argparse.Namespace | None = None) -> str:
    """``--flag or GEMINI_METER_FIELD`` (the flag only when this command has it)."""
    env = f"GEMINI_METER_{field.upper()}"
    flag = _FLAGS.get(field)
    if flag is not None and (args is None or hasattr(args, flag.lstrip("-"))):
        return f"{flag} or {env}"
    return env


def _problem(problem: Problem, args: argparse.Namespace) -> str:
    if problem.field is None:
        return problem.message
    if problem.unknown:
        # Unknown GEMINI_METER_* variables are ignored, so this came from the file.
        return (
            f"unknown setting {problem.field!r} in the settings file "
            "(--config or GEMINI_METER_CONFIG)"
        )
    text = f"{where_to_set(problem.field, args)}: {problem.message}"
    if problem.field == "upstream_api_key":
        text += f"; {OFFLINE_HINT}"
    return text


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    import tomllib

    from ..settings import SettingsError, load_settings

    config: Path | None = getattr(args, "config", None)
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such file")
    flags.setdefault("database_url", getattr(args, "database", None))
    previous = os.environ.get("GEMINI_METER_CONFIG")
    if config is not None:
        os.environ["GEMINI_METER_CONFIG"] = str(config)
    try:
        return load_settings(**flags)
    except SettingsError as exc:
        raise ConfigError("; ".join(_problem(p, args) for p in exc.problems)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file is not valid TOML: {exc}") from exc
    finally:
        # The file applies to this command only, not to whatever runs next in the process.
        if config is not None:
            if previous is None:
                os.environ.pop("GEMINI_METER_CONFIG", None)
            else:
                os.environ["GEMINI_METER_CONFIG"] = previous


# ------------------------------------------------------------------------- database


def sqlite_path(url: str) -> Path | None:
    """The file an SQLite URL names, or None (PostgreSQL, in-memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.partition(":///")[2].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _existing_database(settings: Settings) -> None:
    """Refuse a SQLite file that does not exist: a typo must not read as "no usage"."""
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        raise ConfigError(
            f"no database at {settings.database_url.partition(':///')[2]} (check --database "
            "or GEMINI_METER_DATABASE_URL); `gemini-meter serve` or `gemini-meter db upgrade` "
            "creates one"
        )


async def _with_session(settings: Settings, work: Callable[[AsyncSession], Any]) -> Any:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from ..storage.schema import make_engine

    engine = make_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def _ensure_schema(settings: Settings, *, create: bool = True) -> None:
    """The embedded SQLite default upgrades itself; PostgreSQL is upgraded deliberately.

    With ``create=False`` (commands that only read or change what exists) a SQLite
    file that does not exist is refused instead of created.
    """
    if not create:
        _existing_database(settings)
    if settings.is_sqlite:
        from ..storage import migrate as _migrate

        _migrate.upgrade(settings.database_url)
