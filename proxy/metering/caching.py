"""Context-cache storage: what a cachedContents response says, and what it bills. Pure.

Google bills an explicit cache's storage by cached tokens × time stored, at the model's
storage rate (``cache_storage_per_hour`` in ``prices.toml``, USD per 1M tokens per
hour), and the cached tokens again, at the cached rate, each time a request uses the cache
(``cachedContentTokenCount``, read like any prompt's). The meter charges storage the way
the lifetime is asked for (docs/metering.md, "Context caching"):

- at create, the whole requested lifetime: ``tokens × (expireTime − createTime)``, both
  read off the create response (the ttl or expireTime asked is what set them; without a
  ``createTime``, the ttl asked, or the time left until the expiry);
- on a TTL change, the difference: ``tokens × (new expireTime − old expireTime)``,
  negative when the lifetime shrinks;
- on delete, a refund of what was charged but not used: ``−tokens × (expireTime − now)``,
  nothing once it has expired.

Each figure is ``storage_token_seconds`` on its own record, rounded to a whole
token-second (half away from zero): the times carry nanoseconds, a count does not.
``CacheState`` is what the proxy keeps on the cache's owned resource between the calls.

The cached tokens are not charged at creation. Google's Gemini API caching guide (ai.google.
dev/gemini-api/docs/caching, read 2026-11-29) lists what explicit caching bills: the
cached tokens "at a reduced rate when included in subsequent prompts", the storage
duration, and other input and output; the pricing page lists a context-caching (read)
price and a storage price per model, and no creation price. A user who checked their bill
reported no creation charge (discuss.ai.google.dev/t/114069, read 2026-11-29). Vertex AI
is different ("you're billed for the input tokens used to create the cache at the
standard input token price", cloud.google.com/vertex-ai/generative-ai/docs/context-cache/
context-cache-overview, read 2026-11-29); the proxy fronts the Gemini API only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

__all__ = [
    "CacheSnapshot",
    "CacheState",
    "created_storage",
    "deleted_storage",
    "epoch_seconds",
    "snapshot",
    "updated_storage",
]

_RFC3339: Final = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})$",
    re.IGNORECASE,
)


def epoch_seconds(value: object) -> Decimal | None:
    """An RFC 3339 timestamp as exact seconds since the epoch (nanoseconds kept), or None."""
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        return None
    zone = m.group("zone").upper().replace("Z", "+00:00")
    try:
        whole = datetime.fromisoformat(m.group("base") + zone)
    except ValueError:
        return None
    fraction = Decimal("0." + m.group("fraction")) if m.group("fraction") else Decimal(0)
    return Decimal(int(whole.timestamp())) + fraction


def now_seconds(now: datetime | None = None) -> Decimal:
    """``now`` (default: the clock) in the same exact seconds, to the microsecond."""
    moment = now or datetime.now(UTC)
    return Decimal(int(moment.timestamp())) + Decimal(moment.microsecond) / 1_000_000


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """What a CachedContent resource (create, get or patch response) says of its storage."""

    name: str  # "cachedContents/{id}"
    model: str | None  # "models/" dropped
    tokens: int
    create_time: Decimal | None
    expire_time: Decimal
    expire_text: str  # the expiry as the response wrote it (kept in the state, exact)


def snapshot(payload: object) -> CacheSnapshot | None:
    """The storage facts of a CachedContent response, or None when they are not all there.

    Needs ``name``, ``expireTime`` and ``usageMetadata.totalTokenCount`` (a non-negative
    integer, or its string form); ``createTime`` and ``model`` are read when present.
    """
    if not isinstance(payload, dict):
        return None
    name = payload.get("name")
    expire_text = payload.get("expireTime", payload.get("expire_time"))
    expire = epoch_seconds(expire_text)
    meta = payload.get("usageMetadata", payload.get("usage_metadata"))
    tokens = (
        _count(meta.get("totalTokenCount", meta.get("total_token_count")))
        if isinstance(meta, dict)
        else None
    )
    if not isinstance(name, str) or expire is None or tokens is None:
        return None
    assert isinstance(expire_text, str)
    model = payload.get("model")
    return CacheSnapshot(
        name=name,
        model=model.removeprefix("models/") or None if isinstance(model, str) else None,
        tokens=tokens,
        create_time=epoch_seconds(payload.get("createTime", payload.get("create_time"))),
        expire_time=expire,
        expire_text=expire_text,
    )


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():  # int64 in proto JSON may be a string
        return int(value)
    return None


def _token_seconds(tokens: int, seconds: Decimal) -> int:
    return int((tokens * seconds).to_integral_value(rounding=ROUND_HALF_UP))


def created_storage(cache: CacheSnapshot, requested_ttl: Decimal | None, now: Decimal) -> int:
    """Token-seconds charged at create: the lifetime the response shows; without a
    ``createTime``, the ttl asked, else (an ``expireTime`` was asked) the rest until then."""
    if cache.create_time is not None:
        seconds = cache.expire_time - cache.create_time
    elif requested_ttl is not None:
        seconds = requested_ttl
    else:
        seconds = cache.expire_time - now
    return _token_seconds(cache.tokens, max(seconds, Decimal(0)))


def updated_storage(state: CacheState, cache: CacheSnapshot) -> int:
    """Token-seconds added (negative: given back) by a new expiry."""
    return _token_seconds(state.tokens, cache.expire_time - state.expire_time)


def deleted_storage(state: CacheState, now: Decimal) -> int:
    """Token-seconds given back by a delete at ``now``: the unexpired rest, never positive."""
    if state.expire_time <= now:
        return 0
    return -_token_seconds(state.tokens, state.expire_time - now)


@dataclass(frozen=True, slots=True)
class CacheState:
    """What the proxy keeps on a cache's owned resource: its tokens and current expiry."""

    tokens: int
    expire_text: str

    @property
    def expire_time(self) -> Decimal:
        value = epoch_seconds(self.expire_text)
        assert value is not None  # only ever built from a parsed snapshot
        return value

    @classmethod
    def of(cls, cache: CacheSnapshot) -> CacheState:
        return cls(tokens=cache.tokens, expire_text=cache.expire_text)

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "expire_time": self.expire_text}

    @classmethod
    def from_json(cls, state: object) -> CacheState | None:
        """The state stored on a resource, or None when it is missing or unreadable."""
        if not isinstance(state, dict):
            return None
        tokens = _count(state.get("tokens"))
        expire = state.get("expire_time")
        if tokens is None or epoch_seconds(expire) is None:
            return None
        assert isinstance(expire, str)
        return cls(tokens=tokens, expire_text=expire)


_DURATION: Final = re.compile(r"^(?P<seconds>\d+(?:\.\d{1,9})?)s$")


def requested_ttl(body: object) -> Decimal | None:
    """The ``ttl`` a create or patch body asks for, in seconds (None: none, or unreadable)."""
    if not isinstance(body, dict):
        return None
    value = body.get("ttl")
    m = _DURATION.match(value) if isinstance(value, str) else None
    return Decimal(m.group("seconds")) if m is not None else None
