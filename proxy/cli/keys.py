"""``gemini-meter keys create|list|revoke``: the proxy-issued keys; a key is shown once.

Each command works on the database (``--database``) or, given ``--url`` (or
``GEMINI_METER_ADMIN_URL``), on a running proxy through its admin API (``cli.remote``);
both ways run ``storage.accounts`` and print alike.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from .common import Subparsers, command, group
from .format import FORMATS, render
from .remote import RemoteError, admin_call, local_or_remote_flags, remote_target
from .users import REMOTE, run_local

_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

KEY_COLUMNS = [
    "id",
    "label",
    "user",
    "team",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
]


def expiry(value: str, now: datetime | None = None) -> datetime:
    """``--expires``: a duration from now (``90m``, ``12h``, ``30d``, ``2w``) or an ISO
    date or date-time (naive values are UTC); it must lie in the future."""
    now = now or datetime.now(UTC)
    match = _DURATION.fullmatch(value.strip())
    if match:
        at = now + timedelta(**{_UNITS[match[2]]: int(match[1])})
    else:
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is neither a duration (90m, 12h, 30d, 2w) nor an ISO date or time"
            ) from None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    if at <= now:
        raise argparse.ArgumentTypeError(f"{value!r} is not in the future")
    return at


def register(subparsers: Subparsers) -> None:
    keys = group(
        subparsers,
        "keys",
        help="issue, list and revoke the proxy's keys",
        description="Issue, list and revoke virtual keys. Clients call the proxy with a "
        "virtual key; the proxy bills its user and team and forwards the call with the "
        "upstream key. Only a keyed hash of each key is stored. " + REMOTE,
    )
    p = command(
        keys,
        "create",
        cmd_keys_create,
        help="issue a key; prints it once, alone on the last line",
        description="Issue a key for a user (made if new). Calls with it are billed to "
        "--team, else to the user's home team. The key is printed once, alone on the last "
        "line of stdout.",
    )
    p.add_argument("--user", required=True, help="the user the key belongs to")
    p.add_argument(
        "--team",
        help="the team calls with the key are billed to (default: the user's home team)",
    )
    p.add_argument(
        "--expires",
        type=expiry,
        metavar="WHEN",
        help="refuse the key after WHEN: a duration (90m, 12h, 30d, 2w) or an ISO date or "
        "time such as 2026-12-31T00:00Z (default: never)",
    )
    local_or_remote_flags(p)
    p = command(
        keys,
        "list",
        cmd_keys_list,
        help="list keys with their expiry and last use (never the keys themselves)",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    local_or_remote_flags(p)
    p = command(
        keys,
        "revoke",
        cmd_keys_revoke,
        help="revoke a key by id",
        description="Revoke a key by its id (see `keys list`). Proxies that cached it keep "
        "accepting it until their cache entry expires (key_cache_ttl_seconds).",
    )
    p.add_argument("id", type=int, help="the key's id")
    local_or_remote_flags(p)


def cmd_keys_create(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        from ..admin.models import KeyCreated

        body = {
            "user": args.user,
            "team": args.team,
            "expires_at": args.expires.isoformat() if args.expires is not None else None,
        }
        created = KeyCreated.model_validate(admin_call(target, "POST", "/admin/v1/keys", body))
        info: Any = created.info
        key = created.key
    else:
        from ..storage import accounts

        def work(session: Any, secret: bytes) -> Any:
            return accounts.create_key(
                session, secret, args.user, args.team, expires_at=args.expires
            )

        info, key = _with_secret(args, work)
    line = f"key id {info.id} for user {info.user}" + (f" (team {info.team})" if info.team else "")
    if info.expires_at is not None:
        line += f", expires {info.expires_at.isoformat()}"
    print(line)
    print("The key is shown once; store it now.", file=sys.stderr)
    print(key)
    return 0


def _with_secret(args: argparse.Namespace, work: Any) -> Any:
    from .common import _ensure_schema, _settings, _with_session

    settings = _settings(args)
    _ensure_schema(settings)
    secret = settings.secret_bytes()
    return asyncio.run(_with_session(settings, lambda s: work(s, secret)))


def cmd_keys_list(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        from ..admin.models import KeyList

        listed = KeyList.model_validate(admin_call(target, "GET", "/admin/v1/keys"))
        keys: list[Any] = listed.keys
    else:
        from ..storage import accounts

        keys = run_local(args, accounts.list_keys)
    rows = [{c: getattr(k, c) for c in KEY_COLUMNS} for k in keys]
    print(render(rows, KEY_COLUMNS, args.format))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    target = remote_target(args)
    if target is not None:
        try:
            admin_call(target, "DELETE", f"/admin/v1/keys/{args.id}")
        except RemoteError as exc:
            if exc.status != 404:
                raise
            done = False
        else:
            done = True
    else:
        from ..storage import accounts

        done = run_local(args, lambda s: accounts.revoke_key(s, args.id))
    if not done:
        print(f"no active key with id {args.id}", file=sys.stderr)
        return 1
    print(f"key {args.id} revoked")
    return 0
