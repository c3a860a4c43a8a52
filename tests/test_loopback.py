"""proxy.loopback: which hosts may be reached over plain http."""

from __future__ import annotations

import pytest

from proxy.loopback import is_loopback


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_hosts(host: str):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["example.com", "10.0.0.1", "192.168.1.1", "0.0.0.0", "localhost.example", "::2", ""]
)
def test_other_hosts(host: str):
    assert not is_loopback(host)
