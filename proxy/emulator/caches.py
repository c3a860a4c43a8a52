"""Explicit context caching: ``cachedContents`` create, get, list, patch and delete.

- ``POST /{v}/cachedContents`` with ``model``, ``contents``, ``systemInstruction``,
  ``tools``, ``toolConfig``, ``displayName`` and one of ``ttl`` (a Duration, ``"300s"``)
  or ``expireTime`` (RFC 3339); neither means one hour. The cached input is counted
  like a generateContent prompt (``usage``); under ``MIN_CACHE_TOKENS`` it is refused.
- The resource: ``name`` (``cachedContents/{id}``), ``model`` (``models/{m}``),
  ``createTime``, ``updateTime``, ``expireTime``, ``displayName`` (``""`` when unset)
  and ``usageMetadata.totalTokenCount``; none of the cached members is echoed.
- ``GET /{v}/cachedContents`` pages with ``pageSize`` / ``pageToken`` and answers
  ``{}`` when nothing is alive; ``PATCH`` takes a new ``ttl`` or ``expireTime`` (an
  ``updateMask`` is optional: the SDK sends none); ``DELETE`` answers ``{}``.
- A missing, expired or deleted cache is 403 ``PERMISSION_DENIED``, for get, patch,
  delete and for a generateContent that names it (``cached_tokens``); a generation that
  names a cache may not set ``systemInstruction``, ``tools`` or ``toolConfig`` too.

Shapes and messages, as observed on the real API: a create and a list response posted on
the Gemini forum (discuss.ai.google.dev/t/133912, read 2026-11-29: ``gemini-3.1-pro-
preview``, 2026-03-22, with microsecond ``createTime`` and nanosecond ``expireTime``), and
a public probe log of ``gemini-3.5-flash-lite`` (2026-09-07, found through the code index,
read 2026-11-29) for the minimum size, the 403 on a deleted cache, the 400 on a cache
combined with ``systemInstruction``, an empty list as ``{}``, and a generation's
``cachedContentTokenCount`` counted inside ``promptTokenCount``. The fields are those of
``google.genai.types.CachedContent`` (SDK 3.6.1) and the SDK's ``caches`` module.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

from aiohttp import web

from .state import EmulatorState, emulator_state_key
from .usage import Tally, Tokens, sum_tokens
from .wire import (
    DEFAULT_TIER,
    ApiError,
    Json,
    as_list,
    get_field,
    json_body,
    json_response,
    page_of,
)

# The probe log's model refused 16 tokens with min_total_token_count=1024; Google's
# caching guide lists 1024 for the Flash models and 4096 for the Pro ones.
MIN_CACHE_TOKENS: Final = 1024
DEFAULT_TTL: Final = timedelta(hours=1)
_DEFAULT_PAGE_SIZE: Final = 100
MISSING_CACHE: Final = "CachedContent not found (or permission denied)"
# Google's message names all three whichever was sent (the probe log, 04 and 05).
CACHE_WITH_CONFIG: Final = (
    "CachedContent can not be used with GenerateContent request setting system_instruction, "
    "tools or tool_config.\n\nProposed fix: move those values to CachedContent from "
    "GenerateContent request."
)
# protobuf's JSON form of a Duration: seconds with up to nine fraction digits, then "s".
_DURATION = re.compile(r"^(?P<seconds>-?\d+(?:\.\d{1,9})?)s$")
_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})$",
    re.IGNORECASE,
)


@dataclass
class EmulatedCache:
    """One cached content as the emulator keeps it: its ledger for tests, too."""

    name: str
    model: str  # "models/..."
    display_name: str
    tokens: Tokens  # the cached input by modality
    create_time: datetime
    update_time: datetime
    expire_time: datetime
    deleted: bool = False
    # every expiry it had, oldest first: what storage a test expects billed
    expiries: list[datetime] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum_tokens(self.tokens)

    def alive(self, now: datetime) -> bool:
        return not self.deleted and self.expire_time > now

    def resource(self) -> Json:
        return {
            "name": self.name,
            "model": self.model,
            "createTime": _micros(self.create_time),
            "updateTime": _micros(self.update_time),
            # Google writes the expiry with nanoseconds, the other times with microseconds.
            "expireTime": _nanos(self.expire_time),
            "displayName": self.display_name,
            "usageMetadata": {"totalTokenCount": self.total_tokens},
        }


def _micros(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _nanos(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def parse_duration(value: object) -> timedelta:
    """A Duration in its JSON form (``"3600s"``, ``"1.5s"``), or a 400."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ApiError(
            400,
            "Invalid value at 'cached_content.ttl' "
            f"(type.googleapis.com/google.protobuf.Duration), {value!r}",
        )
    seconds = Decimal(m.group("seconds"))
    if seconds < 0:
        raise ApiError(400, "ttl must not be negative.")
    return timedelta(microseconds=int(seconds * 1_000_000))


def parse_timestamp(value: object) -> datetime:
    """An RFC 3339 timestamp (fractions to nanoseconds, kept to microseconds), or a 400."""
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        raise ApiError(
            400,
            "Invalid value at 'cached_content.expire_time' "
            f"(type.googleapis.com/google.protobuf.Timestamp), {value!r}",
        )
    zone = m.group("zone").upper().replace("Z", "+00:00")
    fraction = (m.group("fraction") or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{m.group('base')}.{fraction}{zone}").astimezone(UTC)


def _expiry(body: Mapping[str, object], now: datetime, *, default: timedelta | None) -> datetime:
    ttl = get_field(body, "ttl")
    expire = get_field(body, "expireTime")
    if ttl is not None and expire is not None:
        raise ApiError(400, "Only one of ttl and expire_time may be set.")
    if ttl is not None:
        return now + parse_duration(ttl)
    if expire is not None:
        return parse_timestamp(expire)
    if default is None:
        raise ApiError(400, "The update must set ttl or expire_time.")
    return now + default


def _count_cached(body: Mapping[str, object]) -> Tokens:
    """The cached input as a generateContent prompt of the same members would count it."""
    # Imported here: generate imports this module for the caches a generation names.
    from .generate import read_part

    tally = Tally()
    contents = body.get("contents")
    for content in contents if isinstance(contents, list) else []:
        for part in as_list(get_field(content, "parts")):
            read_part(part, tally, [])
    system = get_field(body, "systemInstruction")
    if isinstance(system, str):
        tally.text(system)
    for part in as_list(get_field(system, "parts")):
        read_part(part, tally, [])
    return tally.tokens()


async def create_cache(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    body = await json_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "* CreateCachedContentRequest.cached_content.model: model is required")
    if not model.startswith("models/"):
        model = f"models/{model}"
    now = datetime.now(UTC)
    expire = _expiry(body, now, default=DEFAULT_TTL)
    tokens = _count_cached(body)
    total = sum_tokens(tokens)
    if total < MIN_CACHE_TOKENS:
        raise ApiError(
            400,
            f"Cached content is too small. total_token_count={total}, "
            f"min_total_token_count={MIN_CACHE_TOKENS}",
        )
    display = get_field(body, "displayName")
    cache = EmulatedCache(
        # Google's ids are 40 lower-case letters and digits.
        name=f"cachedContents/{secrets.token_hex(20)}",
        model=model,
        display_name=display if isinstance(display, str) else "",
        tokens=tokens,
        create_time=now,
        update_time=now,
        expire_time=expire,
        expiries=[expire],
    )
    state.store_cache(cache)
    return json_response(cache.resource(), DEFAULT_TIER)


def _live(request: web.Request) -> EmulatedCache:
    cache = request.app[emulator_state_key].caches.get(
        f"cachedContents/{request.match_info['cache_id']}"
    )
    if cache is None or not cache.alive(datetime.now(UTC)):
        raise ApiError(403, MISSING_CACHE)
    return cache


async def get_cache(request: web.Request) -> web.StreamResponse:
    return json_response(_live(request).resource(), DEFAULT_TIER)


async def update_cache(request: web.Request) -> web.StreamResponse:
    cache = _live(request)
    body = await json_body(request)
    if "name" in body:
        # Google's reply to a body naming the cache again (observed, June 2025).
        raise ApiError(
            400,
            "Invalid value at 'cached_content' (oneof), oneof field '_name' is already set. "
            "Cannot set 'name'",
        )
    mask = request.query.get("updateMask")
    if mask is not None and not {m.strip() for m in mask.split(",")} <= {
        "ttl",
        "expireTime",
        "expire_time",
    }:
        raise ApiError(400, f"Only ttl or expire_time can be updated, not {mask!r}.")
    now = datetime.now(UTC)
    cache.expire_time = _expiry(body, now, default=None)
    cache.update_time = now
    cache.expiries.append(cache.expire_time)
    return json_response(cache.resource(), DEFAULT_TIER)


async def delete_cache(request: web.Request) -> web.StreamResponse:
    cache = _live(request)
    cache.deleted = True
    return json_response({}, DEFAULT_TIER)


async def list_caches(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    now = datetime.now(UTC)
    alive = [cache for cache in state.caches.values() if cache.alive(now)]
    page = page_of(request, alive, _DEFAULT_PAGE_SIZE)
    body: Json = {}
    if page.items:
        body["cachedContents"] = [cache.resource() for cache in page.items]
    if page.next_token is not None:
        body["nextPageToken"] = page.next_token
    return json_response(body, DEFAULT_TIER)


def cached_tokens(state: EmulatorState, body: Mapping[str, object], model: str) -> Tokens:
    """The tokens of the cache a generateContent request names (none named: none)."""
    name = get_field(body, "cachedContent")
    if name is None:
        return {}
    if not isinstance(name, str):
        raise ApiError(400, "Invalid value at 'cached_content', expected a string.")
    if any(get_field(body, f) is not None for f in ("systemInstruction", "tools", "toolConfig")):
        raise ApiError(400, CACHE_WITH_CONFIG)
    if not name.startswith("cachedContents/"):
        name = f"cachedContents/{name}"
    cache = state.caches.get(name)
    if cache is None or not cache.alive(datetime.now(UTC)):
        raise ApiError(403, MISSING_CACHE)
    if cache.model != f"models/{model}":
        # The emulator's wording: no recorded answer to this mismatch was found.
        raise ApiError(
            400,
            f"Model used by GenerateContent request (models/{model}) and CachedContent "
            f"({cache.model}) has to be the same.",
        )
    return dict(cache.tokens)


def add_cache_routes(router: web.UrlDispatcher, version: str) -> None:
    router.add_post(f"/{version}/cachedContents", create_cache)
    router.add_get(f"/{version}/cachedContents", list_caches)
    one = f"/{version}/cachedContents/{{cache_id:[^/:]+}}"
    router.add_get(one, get_cache)
    router.add_patch(one, update_cache)
    router.add_delete(one, delete_cache)
