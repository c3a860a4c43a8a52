"""Cache storage arithmetic, by hand-worked figures.

The create response below is the one posted on the Gemini forum
(discuss.ai.google.dev/t/133912, read 2026-11-29): a 60-second ttl asked, 4,100 tokens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from proxy.metering.caching import (
    CacheState,
    created_storage,
    deleted_storage,
    epoch_seconds,
    requested_ttl,
    snapshot,
    updated_storage,
)

NOW = Decimal(0)  # unused when the response has a createTime
REAL_CREATE = {
    "name": "cachedContents/frp5xlu6h48e7w2ui9g82imzcoods3e9gb3aonft",
    "model": "models/gemini-3.1-pro-preview",
    "createTime": "2026-03-22T09:34:49.342985Z",
    "updateTime": "2026-03-22T09:34:49.342985Z",
    "expireTime": "2026-03-22T09:35:48.044411163Z",
    "displayName": "",
    "usageMetadata": {"totalTokenCount": 4100},
}


def test_the_real_create_response():
    cache = snapshot(REAL_CREATE)
    assert cache is not None
    assert cache.name == "cachedContents/frp5xlu6h48e7w2ui9g82imzcoods3e9gb3aonft"
    assert cache.model == "gemini-3.1-pro-preview"
    assert cache.tokens == 4100
    # 09:35:48.044411163 - 09:34:49.342985 = 58.701426163 s (Google counts the ttl from
    # when the request arrived, before createTime); 4,100 × 58.701426163 = 240,675.8472683
    # token-seconds, rounded to 240,676.
    assert cache.expire_time - cache.create_time == Decimal("58.701426163")  # type: ignore[operator]
    assert created_storage(cache, Decimal(60), NOW) == 240_676


def test_without_a_create_time_the_ttl_asked_is_charged():
    payload = {k: v for k, v in REAL_CREATE.items() if k != "createTime"}
    cache = snapshot(payload)
    assert cache is not None
    assert created_storage(cache, requested_ttl({"ttl": "60s"}), NOW) == 4100 * 60
    # an expireTime was asked instead: the rest until then, from when the answer came
    # (09:35:48.044411163 - 09:34:48.044411163 = 60 s: 4,100 x 60)
    at = epoch_seconds("2026-03-22T09:34:48.044411163Z")
    assert at is not None
    assert created_storage(cache, None, at) == 4100 * 60
    # an expiry already past charges nothing
    assert created_storage(cache, None, at + 3600) == 0


def test_updates_and_deletes():
    state = CacheState(tokens=2000, expire_text="2026-03-22T10:00:00Z")
    longer = snapshot({**REAL_CREATE, "expireTime": "2026-03-22T10:30:00.5Z"})
    shorter = snapshot({**REAL_CREATE, "expireTime": "2026-03-22T09:45:00Z"})
    assert longer is not None and shorter is not None
    # 30 min 0.5 s more: 2,000 × 1,800.5 = 3,601,000; 15 min less: 2,000 × -900 = -1,800,000
    assert updated_storage(state, longer) == 3_601_000
    assert updated_storage(state, shorter) == -1_800_000
    # deleted 20 minutes 0.25 s before expiry: 2,000 × 1,200.25 = 2,400,500 given back
    at = epoch_seconds("2026-03-22T09:39:59.75Z")
    assert at is not None
    assert deleted_storage(state, at) == -2_400_500
    # deleted after it expired: nothing to give back
    late = epoch_seconds("2026-03-22T10:00:01Z")
    assert late is not None
    assert deleted_storage(state, late) == 0


def test_state_round_trip_and_bad_input():
    cache = snapshot(REAL_CREATE)
    assert cache is not None
    state = CacheState.of(cache)
    assert CacheState.from_json(state.to_json()) == state
    assert state.expire_time == epoch_seconds("2026-03-22T09:35:48.044411163Z")
    for bad in (None, {}, {"tokens": -1, "expire_time": "x"}, {"tokens": 5, "expire_time": 7}):
        assert CacheState.from_json(bad) is None
    payload: object
    for payload in (
        None,
        [],
        {**REAL_CREATE, "usageMetadata": {"totalTokenCount": "lots"}},
        {**REAL_CREATE, "usageMetadata": {"totalTokenCount": True}},
        {**REAL_CREATE, "expireTime": "tomorrow"},
        {k: v for k, v in REAL_CREATE.items() if k != "name"},
    ):
        assert snapshot(payload) is None
    assert snapshot({**REAL_CREATE, "usageMetadata": {"totalTokenCount": "4100"}}) is not None
    assert epoch_seconds("2026-03-22T09:35:48+02:00") == epoch_seconds("2026-03-22T07:35:48Z")
    assert epoch_seconds("2026-02-30T00:00:00Z") is None
    assert epoch_seconds(datetime(2026, 1, 1, tzinfo=UTC)) is None
    assert requested_ttl({"ttl": "1.5s"}) == Decimal("1.5")
    assert requested_ttl({"ttl": "-1s"}) is None
