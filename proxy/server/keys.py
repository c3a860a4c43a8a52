"""Proxy-issued keys and fingerprints of client keys: pure functions, no I/O.

A virtual key is shown once, when it is created; the database keeps only its
keyed hash (HMAC-SHA256 under the server secret), so a stolen database copy
cannot be turned back into working keys, and a key can still be looked up by
hashing what the client presents.
"""

from __future__ import annotations

import base64
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


_SEAL_CONTEXT = b"gemini-meter seal v1"
_NONCE_BYTES = 12


def _seal_key(secret: bytes) -> bytes:
    # A key of its own for sealing, derived from the server secret, so the same secret
    # never serves as both an HMAC key and a cipher key.
    return hmac.new(secret, _SEAL_CONTEXT, hashlib.sha256).digest()


def seal(secret: bytes, plaintext: str) -> str:
    """``plaintext`` encrypted and authenticated (AES-256-GCM) under the server secret.

    For values the proxy must read back but never store in plaintext, such as a
    webhook URL (a Slack webhook URL is itself a credential). The result is
    URL-safe base64 of nonce and ciphertext.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(_seal_key(secret)).encrypt(nonce, plaintext.encode(), _SEAL_CONTEXT)
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(secret: bytes, sealed: str) -> str:
    """What ``seal`` sealed; ``ValueError`` if it was sealed under another secret or altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
        nonce, body = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        return AESGCM(_seal_key(secret)).decrypt(nonce, body, _SEAL_CONTEXT).decode()
    except (InvalidTag, ValueError) as exc:
        raise ValueError("sealed value is not readable with this server secret") from exc
