"""Fixtures for the pricing tests."""

from __future__ import annotations

import pytest

from proxy.pricing import catalog


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    """Each test sees its own first warnings: "once per process" is module state."""
    catalog._warned.clear()
