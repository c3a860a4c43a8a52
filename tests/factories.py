"""Test factories: the end-to-end stack, and strict checks of wire shapes against the SDK.

``make_stack(**overrides)`` builds a proxy in front of a fresh emulator on the
database of the ``migrated_url`` fixture (SQLite and PostgreSQL), issues keys
for alice and carol (team "research") and bob (team "support"), and gives the
test clients for both raw HTTP and the google-genai SDK.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import types
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import select

from proxy.emulator.server import (
    EmulatorConfig,
    EmulatorState,
    create_emulator_app,
    emulator_state_key,
)
from proxy.server.app import create_app
from proxy.server.typedefs import sessionmaker_key, writer_key
from proxy.settings import Settings
from proxy.storage import accounts
from proxy.storage.schema import Base

UPSTREAM_KEY = "upstream-secret-key"
USERS = {"alice": "research", "bob": "support", "carol": "research"}


@dataclass
class Stack:
    proxy: TestServer
    emulator: TestServer
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)
    _clients: list[genai.Client] = field(default_factory=list)
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def app(self) -> web.Application:
        return self.proxy.app  # type: ignore[return-value]

    @property
    def upstream(self) -> EmulatorState:
        return self.emulator.app[emulator_state_key]  # type: ignore[index]

    @property
    def base_url(self) -> str:
        return str(self.proxy.make_url("")).rstrip("/")

    def url(self, path: str) -> str:
        return self.base_url + path

    def sdk(self, user: str = "alice", *, key: str | None = None) -> genai.Client:
        """A real google-genai client pointed at the proxy (use ``.aio`` in tests).

        The async ``models`` API runs on aiohttp; given our own plain session,
        the SDK does not build its ``ClientSession`` subclass, which aiohttp
        deprecates (a warning, and warnings are errors here).
        """
        session = aiohttp.ClientSession()
        self._sessions.append(session)
        client = genai.Client(
            api_key=key or self.keys[user],
            http_options=types.HttpOptions(base_url=self.base_url, aiohttp_client=session),
        )
        self._clients.append(client)
        return client

    def headers(self, user: str = "alice", **extra: str) -> dict[str, str]:
        return {"x-goog-api-key": self.keys[user], **extra}

    async def records(self) -> list[dict[str, Any]]:
        """Every stored usage record, oldest first, after the writer has flushed."""
        await self.app[writer_key].flush()
        table = Base.metadata.tables["usage_records"]
        async with self.app[sessionmaker_key]() as session:
            rows = (await session.execute(select(table).order_by(table.c.id))).mappings().all()
        return [dict(r) for r in rows]

    async def user_id(self, name: str) -> int:
        table = Base.metadata.tables["users"]
        async with self.app[sessionmaker_key]() as session:
            return int(
                (await session.execute(select(table.c.id).where(table.c.name == name))).scalar_one()
            )

    async def close(self) -> None:
        for client in self._clients:
            await client.aio.aclose()
            client.close()
        for session in self._sessions:
            await session.close()


StackFactory = Callable[..., Awaitable[Stack]]


async def start_stack(
    aiohttp_server: Any,
    tmp_path: Any,
    database_url: str,
    emulator_config: EmulatorConfig | None = None,
    upstream: str | None = None,
    wrap_upstream: Callable[[str], Awaitable[str]] | None = None,
    **overrides: Any,
) -> Stack:
    """An emulator and a proxy in front of it on ``database_url`` (already migrated),
    with keys for ``USERS``. ``upstream`` replaces the emulator; ``wrap_upstream``
    is given the emulator's URL and returns that of something put in between."""
    emulator = await aiohttp_server(
        create_emulator_app(emulator_config or EmulatorConfig(background_seconds=0.3))
    )
    emulator_url = str(emulator.make_url("")).rstrip("/")
    if wrap_upstream is not None:
        upstream = await wrap_upstream(emulator_url)
    values: dict[str, Any] = {
        "upstream": upstream or emulator_url,
        "upstream_api_key": SecretStr(UPSTREAM_KEY),
        "database_url": database_url,
        "key_secret": SecretStr("test-secret"),
        "key_secret_file": tmp_path / "secret",
        "writer_flush_interval_seconds": 0.05,
        "upstream_read_timeout_seconds": 5.0,
        # one journal per stack: never a previous test's records replayed
        "journal_dir": tmp_path / f"journal-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings, registry=CollectorRegistry())
    proxy = await aiohttp_server(app)
    stack = Stack(proxy=proxy, emulator=emulator, settings=settings)
    async with app[sessionmaker_key]() as session:
        for user, team in USERS.items():
            _, key = await accounts.create_key(session, settings.secret_bytes(), user, team)
            stack.keys[user] = key
        await session.commit()
    return stack


@pytest.fixture
async def make_stack(
    migrated_url: str, tmp_path: Any, aiohttp_server: Any
) -> AsyncIterator[StackFactory]:
    stacks: list[Stack] = []

    async def build(
        emulator_config: EmulatorConfig | None = None,
        upstream: str | None = None,
        **overrides: Any,
    ) -> Stack:
        stack = await start_stack(
            aiohttp_server, tmp_path, migrated_url, emulator_config, upstream, **overrides
        )
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        await stack.close()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


async def raw(
    method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP call: status, headers, body (no SDK retries in the way)."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, headers=headers, **kwargs) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def assert_strict(value: Any, path: str = "$") -> None:
    """No field the SDK model does not know and no unknown union variant, anywhere.

    The Interactions models accept extra fields and unknown variants silently,
    so a misspelt fixture would validate; this walk catches it.
    """
    if isinstance(value, pydantic.BaseModel):
        assert not getattr(value, "is_unknown", False), f"{path}: unknown variant"
        extra = value.model_extra or {}
        assert not extra, f"{path}: fields the SDK does not know: {sorted(extra)}"
        # __dict__, not getattr: reading deprecated fields would warn.
        for name, item in value.__dict__.items():
            assert_strict(item, f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            assert_strict(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_strict(item, f"{path}.{key}")
