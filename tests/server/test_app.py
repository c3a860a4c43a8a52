"""proxy.server.app: what the app does at start-up for the request path's sake, and its
health and readiness endpoints."""

from __future__ import annotations

import gc
import json
import socket
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.server.app import create_app
from proxy.settings import Secret, Settings
from tests.factories import UPSTREAM_KEY, Stack, raw


async def test_start_up_puts_what_it_built_out_of_the_collectors_sight(stack: Stack):
    # Frozen objects are skipped by every collection: a full one no longer walks the
    # modules, schema and catalog on the request path (a pause of ~130 ms when measured).
    assert gc.get_freeze_count() > 10_000
    await stack.proxy.close()  # the app's cleanup
    assert gc.get_freeze_count() == 0  # given back on cleanup


async def test_serving_collects_the_young_generation_every_10000_allocations_not_700(
    stack: Stack,
):
    # CPython's own thresholds are (700, 10, 10): only the young generation's is larger.
    assert gc.get_threshold() == (10_000, 10, 10)
    await stack.proxy.close()  # the app's cleanup
    assert gc.get_threshold() == (700, 10, 10)  # given back


async def test_health_and_readiness(stack: Stack):
    status, _, body = await raw("GET", stack.url("/healthz"))
    assert (status, json.loads(body)["status"]) == (200, "ok")
    status, _, body = await raw("GET", stack.url("/readyz"))
    assert (status, json.loads(body)["database"]) == (200, "ok")


async def test_readiness_fails_when_the_database_is_unreachable(aiohttp_server: Any, tmp_path: Any):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        upstream="http://127.0.0.1:9",
        upstream_api_key=Secret(UPSTREAM_KEY),
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/gone",
        key_secret=Secret("test-secret"),
        journal_dir=tmp_path / "journal",
    )
    server = await aiohttp_server(create_app(settings, registry=CollectorRegistry()))
    status, _, body = await raw("GET", str(server.make_url("/readyz")))
    assert (status, json.loads(body)["database"]) == (503, "unreachable")
    status, _, _ = await raw("GET", str(server.make_url("/healthz")))
    assert status == 200
