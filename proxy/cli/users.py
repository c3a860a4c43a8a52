"""``gemini-meter users|teams``: who the proxy bills, and the teams they belong to.

A user's home team is what its keys bill to unless made for another team; ``users
move`` changes it and moves the keys that followed it. Names can change freely:
records and keys hold ids.
"""

from __future__ import annotations

import argparse
import asyncio

from .common import (
    Subparsers,
    _ensure_schema,
    _settings,
    _with_session,
    command,
    database_flag,
    group,
)
from .format import FORMATS, render


def register(subparsers: Subparsers) -> None:
    users = group(
        subparsers,
        "users",
        help="list, create, rename users and move them between teams",
        description="The users calls are billed to. `keys create --user NAME` makes a user "
        "too; a user's home team is what its keys bill to unless made for another team.",
    )
    p = command(users, "list", cmd_users_list, help="list users, their home team and active keys")
    p.add_argument("--team", help="only the users whose home team this is")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    database_flag(p)
    p = command(users, "create", cmd_users_create, help="create a user")
    p.add_argument("name", help="the new user's name")
    p.add_argument("--team", help="the user's home team (made if new)")
    database_flag(p)
    p = command(users, "rename", cmd_users_rename, help="rename a user; records and keys follow")
    p.add_argument("name", help="the user's current name")
    p.add_argument("new_name", metavar="NEW_NAME", help="the user's new name")
    database_flag(p)
    p = command(
        users,
        "move",
        cmd_users_move,
        help="move a user to another team",
        description="Make TEAM the user's home team. The user's active keys that billed to "
        "the old home team move too; a key made for another team stays. Records already "
        "stored keep the team they were billed to.",
    )
    p.add_argument("name", help="the user to move")
    p.add_argument("--team", required=True, help="the team to move to (must exist)")
    database_flag(p)

    teams = group(
        subparsers,
        "teams",
        help="list, create and rename teams",
        description="The teams users belong to and calls are billed to.",
    )
    p = command(teams, "list", cmd_teams_list, help="list teams and how many users each has")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    database_flag(p)
    p = command(teams, "create", cmd_teams_create, help="create a team")
    p.add_argument("name", help="the new team's name")
    database_flag(p)
    p = command(teams, "rename", cmd_teams_rename, help="rename a team; records and users follow")
    p.add_argument("name", help="the team's current name")
    p.add_argument("new_name", metavar="NEW_NAME", help="the team's new name")
    database_flag(p)


def cmd_users_list(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings, create=False)
    users = asyncio.run(_with_session(settings, lambda s: accounts.list_users(s, team=args.team)))
    columns = ["id", "name", "team", "active_keys", "created_at"]
    print(render([{c: getattr(u, c) for c in columns} for u in users], columns, args.format))
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings)
    user = asyncio.run(
        _with_session(settings, lambda s: accounts.create_user(s, args.name, args.team))
    )
    print(
        f"user {args.name} created (id {user.id})" + (f" in team {args.team}" if args.team else "")
    )
    return 0


def cmd_users_rename(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings, create=False)
    asyncio.run(
        _with_session(settings, lambda s: accounts.rename_user(s, args.name, args.new_name))
    )
    print(f"user {args.name} renamed to {args.new_name}")
    return 0


def cmd_users_move(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings, create=False)
    moved = asyncio.run(
        _with_session(settings, lambda s: accounts.move_user(s, args.name, args.team))
    )
    print(f"user {args.name} moved to team {args.team}, with {moved} key(s)")
    return 0


def cmd_teams_list(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings, create=False)
    teams = asyncio.run(_with_session(settings, accounts.list_teams))
    columns = ["id", "name", "users", "created_at"]
    print(render([{c: getattr(t, c) for c in columns} for t in teams], columns, args.format))
    return 0


def cmd_teams_create(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings)
    team = asyncio.run(_with_session(settings, lambda s: accounts.create_team(s, args.name)))
    print(f"team {args.name} created (id {team.id})")
    return 0


def cmd_teams_rename(args: argparse.Namespace) -> int:
    from ..storage import accounts

    settings = _settings(args)
    _ensure_schema(settings, create=False)
    asyncio.run(
        _with_session(settings, lambda s: accounts.rename_team(s, args.name, args.new_name))
    )
    print(f"team {args.name} renamed to {args.new_name}")
    return 0
