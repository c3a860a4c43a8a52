"""``gemini-meter keys create|list|revoke``: the proxy-issued keys; a key is shown once."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..storage import accounts
from .common import _ensure_schema, _settings, _with_session
from .format import render


def cmd_keys_create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    secret = settings.secret_bytes()
    info, key = asyncio.run(
        _with_session(settings, lambda s: accounts.create_key(s, secret, args.user, args.team))
    )
    print(f"key id {info.id} for user {info.user}" + (f" (team {info.team})" if info.team else ""))
    print("The key is shown once; store it now.", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    keys = asyncio.run(_with_session(settings, accounts.list_keys))
    rows = [
        {
            "id": k.id,
            "label": k.label,
            "user": k.user,
            "team": k.team,
            "created_at": k.created_at,
            "revoked_at": k.revoked_at,
        }
        for k in keys
    ]
    print(render(rows, ["id", "label", "user", "team", "created_at", "revoked_at"], args.format))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_schema(settings)
    done = asyncio.run(_with_session(settings, lambda s: accounts.revoke_key(s, args.id)))
    if not done:
        print(f"no active key with id {args.id}", file=sys.stderr)
        return 1
    print(f"key {args.id} revoked")
    return 0
