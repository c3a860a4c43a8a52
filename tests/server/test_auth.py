"""Key extraction, key swapping and the TTL cache: the pure parts of ``proxy.server.auth``."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.server.auth import PresentedKey, _TTLCache, presented_key, swap_key
from proxy.server.keys import fingerprint, hash_key, new_key, seal, unseal
from proxy.server.upstream import upstream_url


def test_key_from_header_query_or_bearer():
    assert presented_key({"x-goog-api-key": "a"}, {}) == PresentedKey("a", "header")
    assert presented_key({}, {"key": "b"}) == PresentedKey("b", "query")
    assert presented_key({"authorization": "Bearer c"}, {}) == PresentedKey("c", "bearer")
    assert presented_key({"authorization": "Basic c"}, {}) is None
    assert presented_key({}, {}) is None
    # the header wins over the query, as Google's front end does
    assert presented_key({"x-goog-api-key": "a"}, {"key": "b"}) == PresentedKey("a", "header")


def test_every_key_carrier_is_replaced_by_the_upstream_key():
    headers = CIMultiDict(
        {"X-Goog-Api-Key": "gm-virtual", "Authorization": "Bearer gm-virtual", "X-Other": "1"}
    )
    out = swap_key(headers, "upstream-key")
    assert out.getall("x-goog-api-key") == ["upstream-key"]
    assert "authorization" not in out
    assert out["x-other"] == "1"
    assert "gm-virtual" not in repr(out)


def test_the_query_key_is_dropped_and_the_rest_kept_byte_for_byte():
    url = upstream_url("https://up", "/v1beta/x?alt=sse&key=gm-v&f=a%2Fb&k%65y=gm-w", True)
    assert str(url) == "https://up/v1beta/x?alt=sse&f=a%2Fb"
    assert str(upstream_url("https://up", "/v1beta/x?key=gm-v", True)) == "https://up/v1beta/x"
    kept = upstream_url("https://up", "/v1beta/x?key=own&alt=sse", False)
    assert str(kept) == "https://up/v1beta/x?key=own&alt=sse"


def test_hashes_are_keyed_and_never_the_key():
    key = new_key()
    assert key.startswith("gm-") and len(key) > 40
    assert hash_key(b"s1", key) != hash_key(b"s2", key)
    assert key not in hash_key(b"s1", key)
    assert fingerprint(b"s1", key).startswith("fp-")
    assert fingerprint(b"s1", key) == fingerprint(b"s1", key)


def test_ttl_cache_expires_and_evicts():
    now = [0.0]
    cache: _TTLCache[str, int] = _TTLCache(limit=2, clock=lambda: now[0])
    cache.put("a", 1, ttl=10)
    assert cache.get("a") == (True, 1)
    now[0] = 11
    assert cache.get("a") == (False, None)
    cache.put("a", 1, ttl=10)
    cache.put("b", 2, ttl=10)
    cache.get("a")  # a is now the most recently used
    cache.put("c", 3, ttl=10)
    assert cache.get("b") == (False, None)
    assert cache.get("a") == (True, 1)
    assert cache.get("c") == (True, 3)


def test_ttl_cache_entries_fall_due_for_a_refresh_before_they_expire():
    now = [0.0]
    cache: _TTLCache[str, int] = _TTLCache(limit=2, clock=lambda: now[0])
    cache.put("a", 1, ttl=10, refresh=5)
    cache.put("b", 2, ttl=10)  # no refresh time: never due before it expires
    now[0] = 4
    assert cache.lookup("a") == (True, 1, False)
    now[0] = 5
    assert cache.lookup("a") == (True, 1, True)
    assert cache.lookup("b") == (True, 2, False)
    cache.postpone("a", 3)  # due at 8; it still expires at 10
    assert cache.lookup("a") == (True, 1, False)
    now[0] = 8
    assert cache.lookup("a") == (True, 1, True)
    now[0] = 10.5
    assert cache.lookup("a") == (False, None, False)
    cache.postpone("a", 3)  # gone: nothing to postpone
    assert cache.get("a") == (False, None)


def test_sealed_values_read_back_only_with_the_same_secret():
    url = "https://hooks.example.test/services/T000/B000/secret-part"
    sealed = seal(b"secret-one", url)
    assert "secret-part" not in sealed and url not in sealed
    assert unseal(b"secret-one", sealed) == url
    # fresh nonce each time: equal plaintexts do not show as equal
    assert seal(b"secret-one", url) != sealed
    with pytest.raises(ValueError, match="not readable"):
        unseal(b"secret-two", sealed)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError, match="not readable"):
        unseal(b"secret-one", tampered)
