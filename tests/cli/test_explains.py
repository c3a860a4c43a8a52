"""The CLI explains itself: errors name what to set, help is complete and quick, a
mistyped path is refused, an unknown model is said plainly.

Where the process is the point (what is imported for ``--help``, what reaches stderr
from logging, ``--log-level`` anywhere) the command runs as ``python -m
proxy.cli.main``; elsewhere in-process through ``main(argv)``, as in ``test_cli``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import common
from proxy.cli import usage as usage_cli
from proxy.cli.main import build_parser
from proxy.settings import Settings
from proxy.storage import reports
from tests.cli.test_cli import INTERACTIONS_USAGE, cli, cli_process

HEAVY = ("aiohttp", "sqlalchemy", "pydantic", "pydantic_settings", "prometheus_client", "alembic")

# What a new user sees when serve has no Google key: how to set it, how to try offline.
OFFLINE = (
    "to try it offline, run `gemini-meter emulate --port 8001` and then "
    "`GEMINI_METER_AUTH_MODE=passthrough gemini-meter serve --upstream http://127.0.0.1:8001` "
    "(the README's offline recipe)"
)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


# --- errors name the flag and the variable ------------------------------------------------


def test_serve_without_the_upstream_key_says_how_to_set_it_and_how_to_try_offline(capsys, tmp_path):
    ran = cli(capsys, "serve", "--database", sqlite_url(tmp_path / "m.db"))
    assert ran.code == 2
    assert ran.err.splitlines() == [
        "gemini-meter: serve needs the Gemini API key to forward calls with: set "
        "GEMINI_METER_UPSTREAM_API_KEY (or upstream_api_key in the --config file); " + OFFLINE
    ]


def test_an_empty_upstream_key_names_the_variable_not_the_field(capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_METER_UPSTREAM_API_KEY", " ")
    ran = cli(capsys, "serve")
    assert ran.err.splitlines() == [
        "gemini-meter: GEMINI_METER_UPSTREAM_API_KEY: must not be empty; " + OFFLINE
    ]
    assert "upstream_api_key:" not in ran.err and "Value error" not in ran.err


def test_a_bad_upstream_names_the_flag_and_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_METER_UPSTREAM_API_KEY", "k")
    ran = cli(capsys, "serve", "--upstream", "http://example.com")
    assert ran.err.splitlines() == [
        "gemini-meter: --upstream or GEMINI_METER_UPSTREAM: must use https unless it is a "
        "loopback address"
    ]


def test_a_setting_with_no_flag_on_this_command_names_only_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_METER_UPSTREAM", "ftp://x")
    ran = cli(capsys, "prices")  # prices has no --upstream
    assert ran.err.splitlines() == [
        "gemini-meter: GEMINI_METER_UPSTREAM: must be an http(s) URL with a host"
    ]


# --- quiet, quick, --log-level anywhere ---------------------------------------------------


def test_database_commands_print_no_alembic_chatter(tmp_path):
    url = sqlite_url(tmp_path / "m.db")
    upgraded = cli_process("db", "upgrade", "--database", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stderr == ""
    assert upgraded.stdout.startswith("database at revision ")
    listed = cli_process("keys", "list", "--database", url)
    assert (listed.returncode, listed.stderr) == (0, "")


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_is_accepted_before_or_after_the_command(tmp_path, where):
    url = sqlite_url(tmp_path / "m.db")
    command = ["db", "upgrade", "--database", url]
    flag = ["--log-level", "debug"]
    done = cli_process(*(flag + command if where == "before" else command + flag))
    assert done.returncode == 0, done.stderr
    # At DEBUG Alembic's own lines are shown again: the flag took effect.
    assert "alembic.runtime.migration: Running upgrade" in done.stderr


def test_log_level_after_the_command_overrides_the_one_before(capsys):
    args = build_parser().parse_args(["--log-level", "debug", "prices", "--log-level", "error"])
    assert args.log_level == "ERROR"
    args = build_parser().parse_args(["--log-level", "debug", "prices"])
    assert args.log_level == "DEBUG"  # kept: the command's own default does not erase it


def modules_loaded_by(*argv: str) -> set[str]:
    """The modules imported by ``gemini-meter ARGV``, from a real interpreter."""
    code = (
        "import sys\n"
        "from proxy.cli.main import main\n"
        "try:\n"
        f"    main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stderr.split())


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["usage", "--help"], ["keys"], ["users", "create", "--help"], ["serve", "-h"]],
    ids=" ".join,
)
def test_help_imports_nothing_heavy(argv):
    loaded = modules_loaded_by(*argv)
    assert "proxy.cli.main" in loaded  # the probe did run the CLI
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    assert "proxy.settings" not in loaded


def test_help_has_no_import_of_a_heavy_module_by_importtime():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "proxy.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "proxy.cli.usage" in imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


# --- help texts -----------------------------------------------------------------------------


def every_command(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append(((*path, name), sub, helps.get(name)))
                found += every_command(sub, (*path, name))
    return found


def test_every_command_and_flag_has_a_description():
    commands = every_command(build_parser())
    names = {" ".join(path) for path, _, _ in commands}
    assert {"keys create", "users move", "teams rename", "usage", "db upgrade"} <= names
    for path, parser, summary in commands:
        assert summary, path
        assert parser.description, path
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, (path, action.dest)


def test_every_default_is_shown(capsys):
    for path, parser, _ in every_command(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), (path, action)


def test_the_help_shows_the_settings_defaults():
    # Spelled out in the CLI (importing Settings would load pydantic for --help).
    assert common.DEFAULT_DATABASE_URL == Settings.database_url
    assert common.DEFAULT_UPSTREAM == Settings.upstream
    serve = {path: parser for path, parser, _ in every_command(build_parser())}[("serve",)]
    text = " ".join(serve.format_help().split())
    assert f"default: {Settings.port})" in text
    assert f"default: {common.DEFAULT_DATABASE_URL})" in text


@pytest.mark.parametrize("group", ["keys", "users", "teams", "db"])
def test_a_bare_group_prints_its_help(capsys, group):
    ran = cli(capsys, group)
    assert ran.code == 0
    assert ran.out.startswith(f"usage: gemini-meter {group} ")
    assert "commands:" in ran.out
    assert ran.err == ""


def test_no_command_prints_the_top_help(capsys):
    ran = cli(capsys)
    assert ran.code == 0
    assert "gemini-meter emulate --port 8001" in ran.out  # the offline recipe is right there


# --- a mistyped --database ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["usage"],
        ["keys", "list"],
        ["keys", "revoke", "1"],
        ["users", "list"],
        ["users", "rename", "a", "b"],
        ["users", "move", "a", "--team", "t"],
        ["teams", "list"],
        ["teams", "rename", "a", "b"],
        ["reprice"],
        ["db", "downgrade", "base"],
    ],
    ids=" ".join,
)
def test_reading_a_sqlite_file_that_does_not_exist_is_refused(capsys, tmp_path, argv):
    missing = tmp_path / "gemini-metr.db"
    ran = cli(capsys, *argv, "--database", sqlite_url(missing))
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.splitlines() == [
        f"gemini-meter: no database at {missing} (check --database or "
        "GEMINI_METER_DATABASE_URL); `gemini-meter serve` or `gemini-meter db upgrade` "
        "creates one"
    ]
    assert not missing.exists()


@pytest.mark.parametrize(
    "argv",
    [["db", "upgrade"], ["keys", "create", "--user", "a"], ["users", "create", "a"]],
    ids=" ".join,
)
def test_commands_that_make_things_may_create_the_database(capsys, tmp_path, argv):
    path = tmp_path / "new.db"
    assert cli(capsys, *argv, "--database", sqlite_url(path)).code == 0
    assert path.exists()
    assert cli(capsys, "usage", "--database", sqlite_url(path)).code == 0


# --- price of an unknown model --------------------------------------------------------------


def test_price_of_an_unknown_model_says_so_in_one_line(capsys):
    ran = cli(
        capsys, "price", "--model", "gemini-9-ultra", "--usage", json.dumps(INTERACTIONS_USAGE)
    )
    assert ran.code == 1
    assert ran.out == ""  # no half-empty table of `-` and `None`
    from proxy.pricing import load_catalog

    catalog = load_catalog()
    assert ran.err.splitlines() == [
        f"gemini-meter: model 'gemini-9-ultra' is not in the price catalog ({catalog.version}); "
        f"known models: {', '.join(catalog.models())}; add it with a user price file "
        "(GEMINI_METER_PRICE_CATALOG): docs/pricing.md"
    ]
    assert "gemini-2.5-pro, " in ran.err


# --- the CLI and the report share their names -------------------------------------------


def test_the_cli_offers_exactly_the_reports_groupings_and_measures():
    # one source (storage.columns), which the parser reads without the database layer
    assert usage_cli.GROUP_KEYS is reports.GROUP_KEYS
    assert usage_cli.LABEL_PREFIX == reports.LABEL_PREFIX
    assert usage_cli.TOKEN_COLUMNS == reports.TOKEN_COLUMNS
    assert usage_cli.COST_COLUMNS == reports.COST_COLUMNS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--group-by", "colour"], "cannot group by 'colour'"),
        (["--group-by", "label:"], "cannot group by 'label:'"),
        (["--columns", "requests,price"], "unknown column 'price'; choose from requests, "),
    ],
)
def test_usage_refuses_unknown_groupings_and_columns(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "usage", *argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


REMOTE_COMMANDS = {
    ("users", "list"),
    ("users", "create"),
    ("users", "rename"),
    ("users", "move"),
    ("teams", "list"),
    ("teams", "create"),
    ("teams", "rename"),
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "revoke"),
    ("usage",),
    ("budgets", "set"),
    ("budgets", "list"),
    ("budgets", "status"),
    ("budgets", "delete"),
}


def test_the_commands_that_work_remotely_say_so_in_their_help():
    commands = {path: parser for path, parser, _ in every_command(build_parser())}
    for path in REMOTE_COMMANDS:
        text = " ".join(commands[path].format_help().split())
        assert "--url URL" in text and "--admin-token" in text, path
        assert "admin API" in text, path
    for group in ("users", "teams", "keys", "budgets"):
        assert "--url" in " ".join(commands[(group,)].format_help().split()), group
