"""Fixtures of the emulator's tests: a served emulator, a plain HTTP session and the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import types

from proxy.emulator import EmulatorConfig, create_emulator_app

BACKGROUND_SECONDS = 0.2


@pytest.fixture
async def server(aiohttp_server: Any) -> TestServer:
    app = create_emulator_app(EmulatorConfig(background_seconds=BACKGROUND_SECONDS))
    started: TestServer = await aiohttp_server(app)
    return started


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def aio(server: TestServer, http: aiohttp.ClientSession) -> AsyncIterator[Any]:
    """The SDK's async client pointed at the emulator.

    The SDK's own aiohttp session subclasses ``aiohttp.ClientSession``, which
    aiohttp 3.14 flags with a DeprecationWarning; handing it our session avoids
    that and is a supported option. Interactions use the SDK's httpx client.
    """
    client = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=str(server.make_url("")), aiohttp_client=http),
    ).aio
    yield client
    await client.aclose()
