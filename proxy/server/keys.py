"""Proxy-issued keys and fingerprints of client keys: pure functions, no I/O.

A virtual key is shown once, when it is created; the database keeps only its
keyed hash (HMAC-SHA256 under the server secret), so a stolen database copy
cannot be turned back into working keys, and a key can still be looked up by
hashing what the client presents.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "gm-"


def new_key() -> str:
    """A fresh virtual key: the prefix and 256 bits of randomness."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: bytes, key: str) -> str:
    """The hex HMAC-SHA256 of ``key`` under ``secret``: what the database stores."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def fingerprint(secret: bytes, key: str) -> str:
    """A short, stable, non-reversible name for a client's own Google key.

    Used in passthrough mode as the user name when no alias is configured, and
    wherever a key must be told apart in logs: 16 hex digits of the keyed hash.
    """
    return "fp-" + hash_key(secret, key)[:16]
