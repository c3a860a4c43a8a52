"""``gemini-meter users|teams``: who the proxy bills, and the teams they belong to.

A user's home team is what its keys bill to unless made for another team; ``users
move`` changes it and moves the keys that followed it. Names can change freely:
records and keys hold ids, and budgets on a renamed user or team follow it.

Each command works on the database (``--database``) or, given ``--url`` (or
``GEMINI_METER_ADMIN_URL``), on a running proxy through its admin API (``cli.remote``);
both ways run ``storage.accounts`` and print alike.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .common import Subparsers, command, group
from .format import FORMATS, render
from .remote import admin_call, local_or_remote_flags, path_part, remote_target

USER_COLUMNS = ["id", "name", "team", "active_keys", "created_at"]
TEAM_COLUMNS = ["id", "name", "users", "created_at"]
REMOTE = "Works on the database, or on a running proxy through its admin API with --url."


def register(subparsers: Subparsers) -> None:
    users = group(
        subparsers,
        "users",
        help="list, create, rename users and move them between teams",
        description="The users calls are billed to. `keys create --user NAME` makes a user "
        "too; a user's home team is what its keys bill to unless made for another team. " + REMOTE,
    )
    p = command(users, "list", cmd_users_list, help="list users, their home team and active keys")
    p.add_argument("--team", help="only the users whose home team this is")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    local_or_remote_flags(p)
    p = command(users, "create", cmd_users_create, help="create a user")
    p.add_argument("name", help="the new user's name")
    p.add_argument("--team", help="the user's home team (made if new)")
    local_or_remote_flags(p)
    p = command(
        users,
        "rename",
        cmd_users_rename,
        help="rename a user; records, keys and budgets follow",
        description="Rename a user. Records and keys follow (they hold its id), and so do "
        "the budgets on user:NAME.",
    )
    p.add_argument("name", help="the user's current name")
    p.add_argument("new_name", metavar="NEW_NAME", help="the user's new name")
    local_or_remote_flags(p)
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
    local_or_remote_flags(p)

    teams = group(
        subparsers,
        "teams",
        help="list, create and rename teams",
        description="The teams users belong to and calls are billed to. " + REMOTE,
    )
    p = command(teams, "list", cmd_teams_list, help="list teams and how many users each has")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    local_or_remote_flags(p)
    p = command(teams, "create", cmd_teams_create, help="create a team")
    p.add_argument("name", help="the new team's name")
    local_or_remote_flags(p)
    p = command(
        teams,
        "rename",
        cmd_teams_rename,
        help="rename a team; records, users and budgets follow",
        description="Rename a team. Records, users and keys follow (they hold its id), and "
        "so do the budgets on team:NAME.",
    )
    p.add_argument("name", help="the team's current name")
    p.add_argument("new_name", metavar="NEW_NAME", help="the team's new name")
    local_or_remote_flags(p)


def run_local(args: argparse.Namespace, work: Any, *, create: bool = False) -> Any:
    """``work(session)`` in one transaction on the database the flags name."""
    from .common import _ensure_schema, _settings, _with_session

    settings = _settings(args)
    _ensure_schema(settings, create=create)
    return asyncio.run(_with_session(settings, work))


def cmd_users_list(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        from ..admin.models import UserList

        params = {"team": args.team} if args.team is not None else None
        listed = UserList.model_validate(admin_call(target, "GET", "/admin/v1/users", None, params))
        rows = [u.model_dump() for u in listed.users]
    else:
        from ..storage import accounts

        users = run_local(args, lambda s: accounts.list_users(s, team=args.team))
        rows = [{c: getattr(u, c) for c in USER_COLUMNS} for u in users]
    print(render(rows, USER_COLUMNS, args.format))
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        body = {"name": args.name, "team": args.team}
        user_id = admin_call(target, "POST", "/admin/v1/users", body)["id"]
    else:
        from ..storage import accounts

        user_id = run_local(
            args, lambda s: accounts.create_user(s, args.name, args.team), create=True
        ).id
    print(
        f"user {args.name} created (id {user_id})" + (f" in team {args.team}" if args.team else "")
    )
    return 0


def cmd_users_rename(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        path = f"/admin/v1/users/{path_part(args.name)}"
        admin_call(target, "PATCH", path, {"name": args.new_name})
    else:
        from ..storage import accounts

        run_local(args, lambda s: accounts.rename_user(s, args.name, args.new_name))
    print(f"user {args.name} renamed to {args.new_name}")
    return 0


def cmd_users_move(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        path = f"/admin/v1/users/{path_part(args.name)}"
        moved = admin_call(target, "PATCH", path, {"team": args.team})["keys_moved"]
    else:
        from ..storage import accounts

        moved = run_local(args, lambda s: accounts.move_user(s, args.name, args.team))
    print(f"user {args.name} moved to team {args.team}, with {moved} key(s)")
    return 0


def cmd_teams_list(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        from ..admin.models import TeamList

        listed = TeamList.model_validate(admin_call(target, "GET", "/admin/v1/teams"))
        rows = [t.model_dump() for t in listed.teams]
    else:
        from ..storage import accounts

        teams = run_local(args, accounts.list_teams)
        rows = [{c: getattr(t, c) for c in TEAM_COLUMNS} for t in teams]
    print(render(rows, TEAM_COLUMNS, args.format))
    return 0


def cmd_teams_create(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        team_id = admin_call(target, "POST", "/admin/v1/teams", {"name": args.name})["id"]
    else:
        from ..storage import accounts

        team_id = run_local(args, lambda s: accounts.create_team(s, args.name), create=True).id
    print(f"team {args.name} created (id {team_id})")
    return 0


def cmd_teams_rename(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        path = f"/admin/v1/teams/{path_part(args.name)}"
        admin_call(target, "PATCH", path, {"name": args.new_name})
    else:
        from ..storage import accounts

        run_local(args, lambda s: accounts.rename_team(s, args.name, args.new_name))
    print(f"team {args.name} renamed to {args.new_name}")
    return 0
