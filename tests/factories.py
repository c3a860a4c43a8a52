"""Test factories: the end-to-end stack, strict checks of wire shapes against the SDK, and
the pricing tests' shared catalog and usage builder.

``make_stack(**overrides)`` builds a proxy in front of a fresh emulator on the
database of the ``migrated_url`` fixture (SQLite and PostgreSQL), issues keys
for alice and carol (team "research") and bob (team "support"), and gives the
test clients for both raw HTTP and the google-genai SDK. The proxy runs on
``ProxyTestServer``, i.e. with the same runner as ``gemini-meter serve``.

``recording_upstream`` is a catch-all upstream that records every request it
receives, byte for byte (no decompression), and answers just enough like
Gemini for the proxy to meter it (and for the SDK to list and read models), or
with the error status an ``x-recorded-status`` header asks for:
adversarial tests assert on what did (not) reach it. ``send_raw`` sends bytes
the HTTP client libraries would not.

``usage_metadata`` and ``interaction_usage`` read the usage the SDK parsed from a
response, asserting it is there (the SDK types it Optional).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from google import genai
from google.genai import interactions as gi
from google.genai import types
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from proxy.emulator import (
    EmulatorConfig,
    EmulatorState,
    create_emulator_app,
    emulator_state_key,
)
from proxy.metering.records import Cost, EndpointKind, Usage, UsageRecord
from proxy.pricing import load_catalog
from proxy.server.app import ProxyRunner, create_app
from proxy.server.typedefs import sessionmaker_key, settings_key, writer_key
from proxy.settings import Secret, Settings
from proxy.storage import accounts
from proxy.storage.schema import Base, BudgetRow
from proxy.storage.writes import insert_usage_rows, usage_values

UPSTREAM_KEY = "upstream-secret-key"
# An interaction's create, the call most proxy tests make.
INTERACTIONS = "/v1beta/interactions"
SAY_HELLO = {"model": "gemini-3.5-flash", "input": "Say hello."}
# For tests where the database plays no part (refusals at the edge): SQLite alone.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
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
        return self.proxy.app

    @property
    def upstream(self) -> EmulatorState:
        return self.emulator.app[emulator_state_key]

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


class ProxyTestServer(TestServer):
    """A ``TestServer`` on ``ProxyRunner``, the runner ``gemini-meter serve`` uses, and as
    ``serve`` runs it: a handler whose client left is not cancelled (aiohttp's test server
    cancels it, which no deployment of the proxy does)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return ProxyRunner(self.app, **kwargs)


@pytest.fixture
async def proxy_server() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    """``await proxy_server(app)``: the proxy app served on loopback, closed after the test."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = ProxyTestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


async def start_stack(
    aiohttp_server: Any,
    tmp_path: Any,
    database_url: str,
    emulator_config: EmulatorConfig | None = None,
    upstream: str | None = None,
    wrap_upstream: Callable[[str], Awaitable[str]] | None = None,
    serve_proxy: Callable[[web.Application], Awaitable[TestServer]] | None = None,
    **overrides: Any,
) -> Stack:
    """An emulator and a proxy in front of it on ``database_url`` (already migrated),
    with keys for ``USERS``. ``upstream`` replaces the emulator; ``wrap_upstream``
    is given the emulator's URL and returns that of something put in between;
    ``serve_proxy`` serves the proxy app (default: ``aiohttp_server``)."""
    emulator = await aiohttp_server(
        create_emulator_app(emulator_config or EmulatorConfig(background_seconds=0.3))
    )
    emulator_url = str(emulator.make_url("")).rstrip("/")
    if wrap_upstream is not None:
        upstream = await wrap_upstream(emulator_url)
    values: dict[str, Any] = {
        "upstream": upstream or emulator_url,
        "upstream_api_key": Secret(UPSTREAM_KEY),
        "database_url": database_url,
        "key_secret": Secret("test-secret"),
        "key_secret_file": tmp_path / "secret",
        "writer_flush_interval_seconds": 0.05,
        "upstream_read_timeout_seconds": 5.0,
        # one journal per stack: never a previous test's records replayed
        "journal_dir": tmp_path / f"journal-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings, registry=CollectorRegistry())
    proxy = await (serve_proxy or aiohttp_server)(app)
    stack = Stack(proxy=proxy, emulator=emulator, settings=settings)
    async with app[sessionmaker_key]() as session:
        for user, team in USERS.items():
            _, key = await accounts.create_key(session, settings.secret_bytes(), user, team)
            stack.keys[user] = key
        await session.commit()
    return stack


@pytest.fixture
async def make_stack(
    migrated_url: str, tmp_path: Any, aiohttp_server: Any, proxy_server: Any
) -> AsyncIterator[StackFactory]:
    stacks: list[Stack] = []

    async def build(
        emulator_config: EmulatorConfig | None = None,
        upstream: str | None = None,
        **overrides: Any,
    ) -> Stack:
        stack = await start_stack(
            aiohttp_server,
            tmp_path,
            migrated_url,
            emulator_config,
            upstream,
            serve_proxy=overrides.pop("serve_proxy", proxy_server),
            **overrides,
        )
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        await stack.close()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


async def issue_keys(app: web.Application) -> dict[str, str]:
    """Keys for the usual users on ``app``'s database (a second replica shares the users)."""
    keys = {}
    settings = app[settings_key]
    async with app[sessionmaker_key]() as session:
        for user, team in USERS.items():
            _, keys[user] = await accounts.create_key(session, settings.secret_bytes(), user, team)
        await session.commit()
    return keys


# --- TLS, for the Live API ------------------------------------------------------------------
# google-genai always opens Live sessions over wss (``BaseApiClient._websocket_base_url``
# replaces the base URL's scheme), so a Live test serves the proxy over TLS.


@dataclass(frozen=True)
class Tls:
    """A self-signed certificate for 127.0.0.1: the server's context and a client's trusting it."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    cafile: str  # the certificate, for SSL_CERT_FILE


@pytest.fixture(scope="session")
def tls(tmp_path_factory: Any) -> Tls:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return Tls(server=server, client=client, cafile=str(cert_file))


@pytest.fixture
async def tls_proxy_server(
    tls: Tls,
) -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    """Like ``proxy_server``, over TLS with the ``tls`` certificate (pass as ``serve_proxy``)."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = ProxyTestServer(app, host="127.0.0.1")
        await server.start_server(ssl=tls.server)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


def live_sdk(
    stack: Stack, tls: Tls, user: str = "alice", *, key: str | None = None, version: str = "v1beta"
) -> genai.Client:
    """A google-genai client for the proxy over TLS, for ``aio.live`` and ``aio.auth_tokens``."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client))
    stack._sessions.append(session)
    client = genai.Client(
        api_key=key or stack.keys[user],
        http_options=types.HttpOptions(
            base_url=stack.base_url,
            api_version=version,
            aiohttp_client=session,
            async_client_args={"ssl": tls.client},
        ),
    )
    stack._clients.append(client)
    return client


@dataclass(frozen=True)
class Received:
    """One request as the recording upstream received it, before any decoding."""

    method: str
    raw_path: str  # path and query, exactly as sent
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class RecordingUpstream:
    """A catch-all Gemini stand-in that keeps every request it receives."""

    server: TestServer
    received: list[Received] = field(default_factory=list)
    # names it handed out, every user's alike (as behind one shared key): lists show all
    caches: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def paths(self) -> list[str]:
        return [r.raw_path for r in self.received]


RECORDED_USAGE = {"total_input_tokens": 11, "total_output_tokens": 7, "total_tokens": 18}
RECORDED_UPLOAD_ID = "upload-secret-"


RECORDED_CACHE_TOKENS = 2000
RECORDED_CACHE_TIMES = {
    "createTime": "2026-11-24T12:00:00.000000Z",
    "updateTime": "2026-11-24T12:00:00.000000Z",
    "expireTime": "2099-01-01T00:00:00.000000000Z",
}


def _recorded_owned(
    request: web.Request, path: str, body: bytes, ids: Iterator[int]
) -> web.Response | None:
    """Just enough of cachedContents, fileSearchStores and the files lists for ownership
    tests."""
    upstream: RecordingUpstream = request.app[_recording_key]
    if path.endswith("/cachedContents") and request.method == "POST":
        name = f"cachedContents/rec{next(ids)}"
        upstream.caches.append(name)
        sent = json.loads(body or b"{}")
        return web.json_response(
            {
                "name": name,
                "model": sent.get("model", "models/gemini-2.5-flash"),
                **RECORDED_CACHE_TIMES,
                "displayName": "",
                "usageMetadata": {"totalTokenCount": RECORDED_CACHE_TOKENS},
            }
        )
    if path.endswith("/cachedContents") and request.method == "GET":
        return web.json_response(
            {"cachedContents": [{"name": n, **RECORDED_CACHE_TIMES} for n in upstream.caches]}
        )
    if path.endswith("/files") and request.method == "GET":
        return web.json_response({"files": [{"name": n} for n in upstream.files]})
    if path.endswith("/fileSearchStores") and request.method == "POST":
        name = f"fileSearchStores/rec-store-{next(ids)}"
        upstream.stores.append(name)
        return web.json_response(
            {"name": name, "displayName": "rec", "embeddingModel": "models/gemini-embedding-001"}
        )
    if path.endswith("/fileSearchStores") and request.method == "GET":
        return web.json_response({"fileSearchStores": [{"name": n} for n in upstream.stores]})
    return None


# Google's Model and TunedModel resources as a list or a get returns them (fields and values
# of the REST reference: ai.google.dev/api/models#Model and ai.google.dev/api/tuning#TunedModel,
# read 2026-11-30), for the SDK's models.list, models.get and tunings.get.
RECORDED_MODEL: dict[str, object] = {
    "name": "models/gemini-2.5-flash",
    "version": "001",
    "displayName": "Gemini 2.5 Flash",
    "inputTokenLimit": 1048576,
    "outputTokenLimit": 65536,
    "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent"],
    "temperature": 1,
    "topP": 0.95,
    "topK": 64,
    "maxTemperature": 2,
    "thinking": True,
}
RECORDED_TUNED_MODEL: dict[str, object] = {
    "name": "tunedModels/rec-tuned-1",
    "baseModel": "models/gemini-1.5-flash-001-tuning",
    "displayName": "rec tuned",
    "state": "ACTIVE",
    "createTime": "2026-11-24T12:00:00.000000Z",
    "updateTime": "2026-11-24T12:00:00.000000Z",
}


def _recorded_models(request: web.Request, path: str) -> web.Response | None:
    """``GET /{v}/models``, ``/{v}/tunedModels`` and one of either (any name: the one asked)."""
    parts = path.strip("/").split("/")
    if request.method != "GET" or len(parts) not in (2, 3):
        return None
    if parts[1] == "models":
        sample, collection = RECORDED_MODEL, "models"
    elif parts[1] == "tunedModels":
        sample, collection = RECORDED_TUNED_MODEL, "tunedModels"
    else:
        return None
    if len(parts) == 2:
        return web.json_response({collection: [sample]})
    return web.json_response({**sample, "name": f"{collection}/{parts[2]}"})


_recording_key: web.AppKey[RecordingUpstream] = web.AppKey("recording", RecordingUpstream)


def _recording_app(upstream: RecordingUpstream) -> web.Application:
    ids = itertools.count(1)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        upstream.received.append(
            Received(
                method=request.method,
                raw_path=request.raw_path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        refused = request.headers.get("x-recorded-status")
        if refused is not None:
            # An error of the status the test asks for, whatever the route.
            error = {"code": int(refused), "message": "refused by the recording upstream"}
            return web.json_response({"error": error}, status=int(refused))
        path = request.path
        owned = _recorded_owned(request, path, body, ids)
        if owned is not None:
            return owned
        if path.startswith("/upload/") and "upload_id" not in request.query:
            upload_id = f"{RECORDED_UPLOAD_ID}{next(ids)}"
            return web.json_response(
                {},
                headers={
                    "x-goog-upload-url": f"{request.scheme}://{request.host}{path}"
                    f"?upload_id={upload_id}&upload_protocol=resumable",
                    "x-goog-upload-status": "active",
                },
            )
        if path.startswith("/upload/"):
            name = f"files/rec{next(ids)}"
            upstream.files.append(name)
            return web.json_response({"file": {"name": name, "sizeBytes": str(len(body))}})
        if path.endswith("/interactions") and request.method == "POST":
            interaction = {
                "id": f"int-rec-{next(ids)}",
                "status": "completed",
                "model": "gemini-3.5-flash",
                "usage": RECORDED_USAGE,
            }
            return web.json_response(interaction)
        if "/interactions/" in path:
            iid = path.split("/interactions/")[1].split("/")[0].split(":")[0]
            return web.json_response(
                {
                    "id": iid,
                    "status": "completed",
                    "model": "gemini-3.5-flash",
                    "usage": RECORDED_USAGE,
                }
            )
        if path.endswith(":batchGenerateContent"):
            return web.json_response({"name": f"batches/rec-{next(ids)}", "metadata": {}})
        if "/batches/" in path:
            # Every batch is done, its results in a responses file named after it.
            bid = path.split("/batches/")[1].split("/")[0].split(":")[0]
            output = {"responsesFile": f"files/batch-{bid}"}
            return web.json_response(
                {
                    "name": f"batches/{bid}",
                    "metadata": {"state": "BATCH_STATE_SUCCEEDED", "output": output},
                    "done": True,
                    "response": output,
                }
            )
        if path.endswith("/auth_tokens"):
            return web.json_response({"name": f"auth_tokens/rec-{next(ids)}"})
        if path.endswith(("generateContent", "GenerateContent")):
            return web.json_response(
                {
                    "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}}],
                    "usageMetadata": {
                        "promptTokenCount": 5,
                        "candidatesTokenCount": 2,
                        "totalTokenCount": 7,
                    },
                }
            )
        if path.endswith(":predictLongRunning"):
            # Veo: an operation, done at its first poll with one video (shapes as the
            # emulator's, proxy/emulator/media.py)
            model = path.split("/models/")[1].split(":")[0]
            return web.json_response({"name": f"models/{model}/operations/oprec{next(ids)}"})
        models = _recorded_models(request, path)
        if models is not None:
            return models
        if "/operations/" in path and request.method == "GET":
            name = path.split("/", 2)[2].rstrip("/")
            file_id = "vid" + name.rsplit("/", 1)[1]
            video = f"https://generativelanguage.googleapis.com/v1beta/files/{file_id}"
            samples = [{"video": {"uri": f"{video}:download?alt=media"}}]
            return web.json_response(
                {
                    "name": name,
                    "done": True,
                    "response": {"generateVideoResponse": {"generatedSamples": samples}},
                }
            )
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1 << 30)
    app[_recording_key] = upstream
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def recording_upstream(aiohttp_server: Any) -> RecordingUpstream:
    """The catch-all upstream; pass ``upstream=recording_upstream.url`` to ``make_stack``."""
    upstream = RecordingUpstream(server=None)  # type: ignore[arg-type]
    # auto_decompress off: the test sees the bytes on the wire, not aiohttp's reading of them
    upstream.server = await aiohttp_server(_recording_app(upstream), auto_decompress=False)
    return upstream


async def send_raw(host: str, port: int | None, data: bytes) -> tuple[int, bytes, bytes]:
    """Write ``data`` on a fresh connection; the answer's status, head and body.

    Reads the body by its Content-Length when it has one, so a refusal sent
    before the request body is complete is seen at once (the server may keep
    the connection open a while to drain that body).
    """
    assert port is not None  # a started server's
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(30):
            head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if data.startswith(b"HEAD "):
                body = b""  # a HEAD answer's length describes a body it does not send
            elif length is not None:
                body = await reader.readexactly(length)
            else:
                body = await reader.read()
    finally:
        writer.close()
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, head, body


async def raw_target(
    stack: Stack, method: str, target: str, user: str | None = "bob", body: bytes = b""
) -> tuple[int, bytes]:
    """A request whose target goes out exactly as written (no client normalising it),
    with ``user``'s key (none for ``None``): the status and body the proxy answered."""
    key = "" if user is None else f"x-goog-api-key: {stack.keys[user]}\r\n"
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"{key}Content-Length: {len(body)}\r\n"
        "Content-Type: application/json\r\n\r\n"
    ).encode() + body
    status, _, answer = await send_raw(stack.proxy.host, stack.proxy.port, request)
    return status, answer


async def assert_only_the_owner_reaches(
    stack: Stack,
    upstream: RecordingUpstream,
    path: str,
    body: Any,
    others: Sequence[str],
    *,
    owner: str = "alice",
    owner_too: bool = False,
) -> None:
    """POST ``body`` to ``path`` as each of ``others``: 404 in Gemini's shape, and nothing
    reaches ``upstream``; then as ``owner``, whose call goes through (unless ``owner_too``:
    a name that is not the owned one is refused to the owner as well)."""
    for user in others:
        status, _, answer = await raw(
            "POST", stack.url(path), headers=stack.headers(user), json=body
        )
        assert status == 404, (user, path, body)
        gemini_error(answer, 404, "NOT_FOUND")
    assert upstream.received == []
    if owner_too:
        return
    status, _, _ = await raw("POST", stack.url(path), headers=stack.headers(owner), json=body)
    assert status == 200
    assert len(upstream.received) == 1


def gemini_error(body: bytes, code: int, status: str) -> str:
    """The message of a Gemini-shaped error, after checking its code and status."""
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


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


# --- what the SDK parsed ---------------------------------------------------------------------
# The SDK types every usage field Optional, as the API may leave it out; the proxy's
# responses always carry it, so a test asserts it is there before it reads the figures.


def usage_metadata(
    response: types.GenerateContentResponse,
) -> types.GenerateContentResponseUsageMetadata:
    """A generateContent response's (or chunk's) ``usageMetadata``, asserted present."""
    assert response.usage_metadata is not None, "the response carries no usageMetadata"
    return response.usage_metadata


def interaction_usage(interaction: gi.Interaction) -> gi.Usage:
    """An interaction's ``usage``, asserted present."""
    assert interaction.usage is not None, f"interaction {interaction.id} carries no usage"
    return interaction.usage


# --- pricing ----------------------------------------------------------------------------------

CATALOG = load_catalog()
AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
COST_PARTS = (
    "input",
    "cached",
    "intermediate",
    "output",
    "thinking",
    "grounding",
    "media",
    "storage",
)


def metric_sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def D(value: str) -> Decimal:
    return Decimal(value)


def usage(**kwargs: Any) -> Usage:
    """A Usage whose total is consistent with its parts, like a parser's."""
    u = Usage(**kwargs)
    return replace(
        u,
        total_tokens=u.input_tokens + u.intermediate_tokens + u.output_tokens + u.thinking_tokens,
    )


def assert_cost(cost: Cost, expected: dict[str, str]) -> None:
    """``cost`` is the shipped catalog's and has exactly the ``expected`` non-zero parts."""
    assert cost.catalog_version == CATALOG.version
    assert cost.total == D(expected["total"])
    for part in COST_PARTS:
        assert getattr(cost, part) == D(expected.get(part, "0")), part


# --- budgets ----------------------------------------------------------------------------------


async def add_budget(
    app: web.Application,
    scope: str,
    *,
    limit_usd: str | None = None,
    limit_tokens: int | None = None,
    category: str | None = None,
    window: str = "daily",
    timezone: str = "UTC",
    mode: str = "enforce",
) -> int:
    """Insert a ``budgets`` row for ``scope`` ("user:alice", "global", ...); its id.

    The proxy sees it at its next refresh (``app[budgets_key].refresh()`` in tests).
    """
    kind, _, name = scope.partition(":")
    async with app[sessionmaker_key]() as session:
        row = BudgetRow(
            scope_kind=kind,
            scope_name=name or None,
            limit_usd=Decimal(limit_usd) if limit_usd is not None else None,
            limit_tokens=limit_tokens,
            category=category,
            window=window,
            timezone=timezone,
            thresholds=["0.5", "0.8", "1"],
            mode=mode,
            webhook_format="json",
        )
        session.add(row)
        await session.commit()
        return row.id


async def add_spend(
    app: web.Application,
    user: str,
    cost_usd: str,
    *,
    at: datetime | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> None:
    """Insert a priced usage record of ``cost_usd`` for ``user`` (as if from an earlier call)."""
    async with app[sessionmaker_key]() as session:
        principal = await accounts.principal_for_user(session, user)
        record = UsageRecord(
            request_id=uuid.uuid4().hex,
            created_at=at or datetime.now(UTC),
            principal=principal,
            model="gemini-2.5-flash",
            endpoint=EndpointKind.GENERATE_CONTENT,
            streamed=False,
            upstream_status=200,
            latency_seconds=0.1,
            ttfb_seconds=0.1,
            usage=Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                total_tokens=input_tokens + output_tokens,
            ),
            cost=Cost(total=Decimal(cost_usd), input=Decimal(cost_usd), catalog_version="test"),
        )
        await insert_usage_rows(session, [usage_values(record)])
        await session.commit()


# --- the Batch API ------------------------------------------------------------------------


def batch_request(text: str, key: str | None = None) -> types.InlinedRequestDict:
    """One user turn as a batch's inline request (its ``metadata.key`` when given)."""
    request: types.InlinedRequestDict = {"contents": [{"parts": [{"text": text}], "role": "user"}]}
    if key is not None:
        request["metadata"] = {"key": key}
    return request


# --- raw streamed answers, byte for byte ------------------------------------------------------

# The head of an SSE answer in chunked encoding, as an upstream that streams sends it.
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
# A stream's final usage (generateContent's usageMetadata): 4 in, 3 out.
STREAM_USAGE = {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}


def sse_text_event(text: str, usage: dict[str, int] | None = None) -> bytes:
    """One generateContent stream event carrying ``text`` (and ``usage``), as one chunk of
    chunked encoding."""
    event: dict[str, Any] = {"candidates": [{"content": {"parts": [{"text": text}]}}]}
    if usage is not None:
        event["usageMetadata"] = usage
    data = b"data: " + json.dumps(event).encode() + b"\r\n\r\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_request(key: str) -> bytes:
    """A streamed generateContent call as raw bytes, for a client on a bare connection."""
    body = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()
    return (
        b"POST /v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse HTTP/1.1\r\n"
        b"Host: meter\r\nContent-Type: application/json\r\nx-goog-api-key: "
        + key.encode()
        + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
