"""Forwarding, attribution and ownership, over real HTTP on both databases."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import text

from proxy.server.app import create_app
from proxy.server.keys import fingerprint
from proxy.server.typedefs import authenticator_key, sessionmaker_key
from proxy.settings import Settings
from proxy.storage import accounts
from tests.factories import UPSTREAM_KEY, Stack, StackFactory, raw

CREATE = "/v1beta/interactions"
BODY = {"model": "gemini-3.5-flash", "input": "Say hello."}


def gemini_error(body: bytes, code: int, status: str) -> str:
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


async def test_unknown_key_is_refused_and_not_forwarded(stack: Stack):
    status, _, body = await raw(
        "POST", stack.url(CREATE), headers={"x-goog-api-key": "gm-not-a-key"}, json=BODY
    )
    message = gemini_error(body, 401, "UNAUTHENTICATED")
    assert "gm-not-a-key" not in message
    status2, _, body2 = await raw("POST", stack.url(CREATE), json=BODY)
    gemini_error(body2, 401, "UNAUTHENTICATED")
    assert (status, status2) == (401, 401)
    assert list(stack.upstream.requests) == []
    assert await stack.records() == []


async def test_the_upstream_never_sees_a_virtual_key(stack: Stack):
    key = stack.keys["alice"]
    for kwargs in (
        {"headers": {"x-goog-api-key": key}},
        {"params": {"key": key, "alt": "json"}},
        {"headers": {"Authorization": f"Bearer {key}"}},
    ):
        status, _, _ = await raw("POST", stack.url(CREATE), json=BODY, **kwargs)
        assert status == 200
    seen = list(stack.upstream.requests)
    assert len(seen) == 3
    for request in seen:
        assert request.api_key == UPSTREAM_KEY
        assert "key" not in request.query
        assert key not in json.dumps(request.headers)
    assert seen[1].query == {"alt": "json"}


async def test_revoked_key_stops_working_within_the_ttl(make_stack: StackFactory):
    stack = await make_stack(key_cache_ttl_seconds=0)
    assert (await raw("POST", stack.url(CREATE), headers=stack.headers(), json=BODY))[0] == 200
    async with stack.app[sessionmaker_key]() as session:
        [info] = [k for k in await accounts.list_keys(session) if k.user == "alice"]
        assert await accounts.revoke_key(session, info.id)
        await session.commit()
    status, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers(), json=BODY)
    assert status == 401
    gemini_error(body, 401, "UNAUTHENTICATED")


async def test_request_is_forwarded_unchanged_but_for_hop_by_hop_headers(stack: Stack):
    status, headers, body = await raw(
        "GET",
        stack.url("/v1beta/models/gemini-2.5-flash?pageSize=5&filter=a%2Fb"),
        headers=stack.headers(
            **{
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
                "Proxy-Authorization": "Basic c2VjcmV0",
            }
        ),
    )
    [seen] = list(stack.upstream.requests)
    assert seen.method == "GET"
    assert seen.path == "/v1beta/models/gemini-2.5-flash"
    assert seen.query == {"pageSize": "5", "filter": "a/b"}
    assert seen.headers["x-custom"] == "kept"
    assert "x-drop-me" not in seen.headers
    assert "proxy-authorization" not in seen.headers
    # the emulator's answer, relayed as it was
    assert status == 404
    gemini_error(body, 404, "NOT_FOUND")
    assert headers["Content-Type"].startswith("application/json")


async def test_upstream_errors_are_relayed_unchanged_and_recorded_with_zero_tokens(stack: Stack):
    status, _, body = await raw(
        "POST", stack.url(CREATE), headers=stack.headers(**{"x-emulator-fail": "429"}), json=BODY
    )
    assert status == 429
    gemini_error(body, 429, "RESOURCE_EXHAUSTED")
    [record] = await stack.records()
    assert record["upstream_status"] == 429
    assert record["total_tokens"] == record["input_tokens"] == record["output_tokens"] == 0
    assert record["interaction_id"] is None
    assert record["parse_error"] is False


async def test_missing_or_malformed_usage_is_recorded_and_flagged(stack: Stack):
    for mode in ("missing", "malformed"):
        status, _, _ = await raw(
            "POST",
            stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
            headers=stack.headers(**{"x-emulator-usage": mode}),
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
        assert status == 200
    records = await stack.records()
    assert [(r["parse_error"], r["total_tokens"]) for r in records] == [(True, 0), (True, 0)]


async def test_unreachable_upstream_is_502(make_stack: StackFactory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = await make_stack(upstream=f"http://127.0.0.1:{port}")
    status, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers(), json=BODY)
    assert status == 502
    gemini_error(body, 502, "UNAVAILABLE")


async def test_silent_upstream_is_504(make_stack: StackFactory):
    stack = await make_stack(upstream_read_timeout_seconds=0.2)
    status, _, body = await raw(
        "POST",
        stack.url(CREATE),
        headers=stack.headers(**{"x-emulator-delay-ms": "3000"}),
        json=BODY,
    )
    assert status == 504
    gemini_error(body, 504, "DEADLINE_EXCEEDED")


async def test_request_size_is_capped(make_stack: StackFactory):
    stack = await make_stack(max_request_bytes=1000)
    big = {"model": "gemini-3.5-flash", "input": "x" * 2000}
    status, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers(), json=big)
    assert status == 413
    gemini_error(body, 413, "INVALID_ARGUMENT")
    assert list(stack.upstream.requests) == []  # refused on its Content-Length, not forwarded

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 500

    status, _, body = await raw(
        "POST", stack.url("/upload/v1beta/files"), headers=stack.headers(), data=chunks()
    )
    assert status == 413
    # a chunked upload is cut off once it passes the limit
    gemini_error(body, 413, "INVALID_ARGUMENT")


async def test_uploads_stream_through(stack: Stack):
    size = 8 * 1024 * 1024

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // 65536):
            yield b"z" * 65536

    status, _, body = await raw(
        "POST", stack.url("/upload/v1beta/files"), headers=stack.headers(), data=chunks()
    )
    assert status == 200
    assert int(json.loads(body)["file"]["sizeBytes"]) == size


async def test_absolute_uri_and_connect_are_refused(stack: Stack):
    host, port = stack.proxy.host, stack.proxy.port
    for request_line in (
        b"GET http://evil.example/v1beta/models HTTP/1.1",
        b"CONNECT evil.example:443 HTTP/1.1",
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request_line + b"\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        await writer.drain()
        response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        gemini_error(body, 400, "INVALID_ARGUMENT")
    assert list(stack.upstream.requests) == []


async def test_paths_outside_the_api_are_not_forwarded(stack: Stack):
    status, _, body = await raw("GET", stack.url("/admin"), headers=stack.headers())
    assert status == 404
    gemini_error(body, 404, "NOT_FOUND")
    assert list(stack.upstream.requests) == []


async def test_interactions_are_served_only_to_their_owner(stack: Stack):
    status, _, body = await raw(
        "POST", stack.url(CREATE), headers=stack.headers("alice"), json=BODY
    )
    assert status == 200
    iid = json.loads(body)["id"]
    before = len(stack.upstream.requests)
    for method, path, payload in (
        ("GET", f"{CREATE}/{iid}", None),
        ("POST", f"{CREATE}/{iid}/cancel", None),
        ("DELETE", f"{CREATE}/{iid}", None),
        ("POST", CREATE, {**BODY, "previous_interaction_id": iid}),
    ):
        status, _, body = await raw(
            method, stack.url(path), headers=stack.headers("bob"), json=payload
        )
        assert status == 404, (method, path)
        gemini_error(body, 404, "NOT_FOUND")
    # carol shares alice's team, but sharing is by owner by default
    status, _, _ = await raw("GET", stack.url(f"{CREATE}/{iid}"), headers=stack.headers("carol"))
    assert status == 404
    assert len(stack.upstream.requests) == before
    status, _, _ = await raw("GET", stack.url(f"{CREATE}/{iid}"), headers=stack.headers("alice"))
    assert status == 200


async def test_team_sharing_lets_teammates_continue_an_interaction(make_stack: StackFactory):
    stack = await make_stack(interaction_sharing="team")
    _, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers("alice"), json=BODY)
    iid = json.loads(body)["id"]
    follow = {**BODY, "previous_interaction_id": iid}
    ok, _, _ = await raw("POST", stack.url(CREATE), headers=stack.headers("carol"), json=follow)
    refused, _, _ = await raw("POST", stack.url(CREATE), headers=stack.headers("bob"), json=follow)
    assert (ok, refused) == (200, 404)


async def test_ownership_survives_a_restart_through_the_database(stack: Stack):
    _, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers("alice"), json=BODY)
    iid = json.loads(body)["id"]
    await stack.records()  # the writer has stored the owner
    # a fresh authenticator (another process) knows nothing in memory
    auth = stack.app[authenticator_key]
    auth._owners = type(auth._owners)(10)
    status, _, _ = await raw("GET", stack.url(f"{CREATE}/{iid}"), headers=stack.headers("bob"))
    assert status == 404
    status, _, _ = await raw("GET", stack.url(f"{CREATE}/{iid}"), headers=stack.headers("alice"))
    assert status == 200


async def test_passthrough_mode_keeps_the_clients_key_and_names_its_fingerprint(
    make_stack: StackFactory,
):
    own_key = "AIza-client-own-google-key"
    fp = fingerprint(b"test-secret", own_key)
    stack = await make_stack(auth_mode="passthrough", passthrough_aliases={fp: "dana"})
    other_key = "AIza-another-client-key"
    for key in (own_key, other_key):
        status, _, _ = await raw(
            "POST", stack.url(CREATE), headers={"x-goog-api-key": key}, json=BODY
        )
        assert status == 200
    assert [r.api_key for r in stack.upstream.requests] == [own_key, other_key]
    records = await stack.records()
    assert [r["user_id"] for r in records] == [
        await stack.user_id("dana"),
        await stack.user_id(fingerprint(b"test-secret", other_key)),
    ]


async def test_no_secret_is_stored_in_plaintext(stack: Stack):
    for user in ("alice", "bob"):
        await raw("POST", stack.url(CREATE), headers=stack.headers(user), json=BODY)
    await stack.records()
    async with stack.app[sessionmaker_key]() as session:
        dump = []
        for table in ("users", "teams", "api_keys", "usage_records", "interactions"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            dump.append(repr(rows))
    everything = "\n".join(dump)
    for secret in (*stack.keys.values(), UPSTREAM_KEY, "test-secret"):
        assert secret not in everything


async def test_health_and_readiness(stack: Stack):
    status, _, body = await raw("GET", stack.url("/healthz"))
    assert (status, json.loads(body)["status"]) == (200, "ok")
    status, _, body = await raw("GET", stack.url("/readyz"))
    assert (status, json.loads(body)["database"]) == (200, "ok")


# --- a hand-driven upstream, for what the emulator cannot show deterministically --------


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


USAGE = {
    "total_input_tokens": 10,
    "total_output_tokens": 5,
    "total_thought_tokens": 2,
    "total_tokens": 17,
}


async def _gated_upstream(aiohttp_server: Any, gate: asyncio.Event) -> Any:
    """An upstream that sends one event, waits for the test, then finishes."""

    async def create(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interaction = {"id": "int-gated", "status": "in_progress", "model": "gemini-3.5-flash"}
        await response.write(
            _sse({"event_type": "interaction.created", "interaction": interaction, "event_id": "1"})
        )
        await gate.wait()
        done = {**interaction, "status": "completed", "usage": USAGE}
        await response.write(
            _sse({"event_type": "interaction.completed", "interaction": done, "event_id": "2"})
        )
        await response.write(b"data: [DONE]\n\n")
        return response

    async def generate(request: web.Request) -> web.Response:
        payload = {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}],
            "usageMetadata": {
                "promptTokenCount": 7,
                "candidatesTokenCount": 3,
                "totalTokenCount": 10,
            },
            "responseId": "resp-gz",
        }
        return web.Response(
            body=gzip.compress(json.dumps(payload).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def cut(request: web.Request) -> web.StreamResponse:
        # A stream that ends after a cumulative usage, without interaction.completed.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interaction = {"id": "int-cut", "status": "in_progress", "model": "gemini-3.5-flash"}
        await response.write(
            _sse({"event_type": "interaction.created", "interaction": interaction, "event_id": "1"})
        )
        partial = {"total_input_tokens": 4, "total_output_tokens": 1, "total_tokens": 5}
        await response.write(_sse({"event_type": "step.stop", "index": 1, "usage": USAGE}))
        await response.write(_sse({"event_type": "step.stop", "index": 2, "usage": partial}))
        return response

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def get(request: web.Request) -> web.Response:
        iid = request.match_info["id"]
        if iid == "int-cut":
            # the cut stream's interaction went on upstream and completed
            done = {"id": iid, "status": "completed", "model": "gemini-3.5-flash", "usage": USAGE}
            return web.json_response(done)
        return web.json_response({"id": iid, "status": "in_progress", "model": "gemini-3.5-flash"})

    app = web.Application()
    app.router.add_post("/v1beta/interactions", create)
    app.router.add_get("/v1beta/interactions/{id}", get)
    app.router.add_post("/v1alpha/interactions", cut)
    app.router.add_get("/v1alpha/interactions/{id}", get)
    app.router.add_post("/v1/interactions", garbage)
    app.router.add_post("/v1beta/models/{model}:generateContent", generate)
    return await aiohttp_server(app)


async def test_sse_is_relayed_event_by_event(make_stack: StackFactory, aiohttp_server: Any):
    gate = asyncio.Event()
    upstream = await _gated_upstream(aiohttp_server, gate)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(CREATE), headers=stack.headers(), json={**BODY, "stream": True}
        ) as response,
    ):
        # the first event arrives while the upstream is still holding the rest back
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=5)
        assert b"interaction.created" in first
        gate.set()
        rest = await response.content.read()
    assert b"interaction.completed" in rest and rest.endswith(b"data: [DONE]\n\n")
    [record] = await stack.records()
    assert (record["input_tokens"], record["thinking_tokens"], record["total_tokens"]) == (
        10,
        2,
        17,
    )


async def test_a_streamed_interaction_is_owned_as_soon_as_it_is_named(
    make_stack: StackFactory, aiohttp_server: Any
):
    gate = asyncio.Event()
    upstream = await _gated_upstream(aiohttp_server, gate)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(CREATE), headers=stack.headers(), json={**BODY, "stream": True}
        ) as response,
    ):
        await response.content.readuntil(b"\n\n")
        # mid-stream, the creator can already fetch it and nobody else can
        mine, _, _ = await raw("GET", stack.url(f"{CREATE}/int-gated"), headers=stack.headers())
        theirs, _, _ = await raw(
            "GET", stack.url(f"{CREATE}/int-gated"), headers=stack.headers("bob")
        )
        gate.set()
        await response.content.read()
    assert (mine, theirs) == (200, 404)


async def test_a_client_that_leaves_mid_stream_is_still_billed(
    make_stack: StackFactory, aiohttp_server: Any
):
    gate = asyncio.Event()
    upstream = await _gated_upstream(aiohttp_server, gate)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url(CREATE), headers=stack.headers(), json={**BODY, "stream": True}
        ) as response,
    ):
        await response.content.readuntil(b"\n\n")
    # the client is gone; the upstream finishes afterwards
    await asyncio.sleep(0.05)
    gate.set()
    for _ in range(100):
        records = await stack.records()
        if records:
            break
        await asyncio.sleep(0.02)
    [record] = records
    assert record["client_disconnected"] is True
    assert record["total_tokens"] == 17


async def test_compressed_bodies_are_relayed_as_sent_and_still_metered(
    make_stack: StackFactory, aiohttp_server: Any
):
    upstream = await _gated_upstream(aiohttp_server, asyncio.Event())
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, headers, body = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
        headers=stack.headers(**{"Accept-Encoding": "gzip, br"}),
        json={"contents": []},
    )
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["responseId"] == "resp-gz"
    [record] = await stack.records()
    assert (record["input_tokens"], record["output_tokens"]) == (7, 3)


async def test_metrics_count_what_was_recorded(stack: Stack):
    await raw(
        "POST",
        stack.url("/v1beta/models/gemini-2.5-flash:generateContent"),
        headers=stack.headers(),
        json={"contents": [{"parts": [{"text": "Hello there, metrics."}]}]},
    )
    [record] = await stack.records()
    status, headers, body = await raw("GET", stack.url("/metrics"))
    assert status == 200
    text_body = body.decode()
    series = 'model="gemini-2.5-flash",principal="research"'
    input_tokens, output_tokens = float(record["input_tokens"]), float(record["output_tokens"])
    assert f'gemini_meter_tokens_total{{{series},type="input"}} {input_tokens}' in text_body
    assert f'gemini_meter_tokens_total{{{series},type="output"}} {output_tokens}' in text_body
    assert (
        'gemini_meter_requests_total{endpoint="generate_content",model="gemini-2.5-flash",'
        'principal="research",status_class="2xx",streamed="false"} 1.0'
    ) in text_body
    # no secret and no user name (the principal label is the team by default)
    assert stack.keys["alice"] not in text_body and "alice" not in text_body


async def test_readiness_fails_when_the_database_is_unreachable(aiohttp_server: Any, tmp_path: Any):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        upstream="http://127.0.0.1:9",
        upstream_api_key=SecretStr(UPSTREAM_KEY),
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/gone",
        key_secret=SecretStr("test-secret"),
        journal_dir=tmp_path / "journal",
    )
    server = await aiohttp_server(create_app(settings, registry=CollectorRegistry()))
    status, _, body = await raw("GET", str(server.make_url("/readyz")))
    assert (status, json.loads(body)["database"]) == (503, "unreachable")
    status, _, _ = await raw("GET", str(server.make_url("/healthz")))
    assert status == 200


async def test_a_stream_cut_before_completion_is_provisional_until_the_terminal_usage(
    make_stack: StackFactory, aiohttp_server: Any
):
    upstream = await _gated_upstream(aiohttp_server, asyncio.Event())
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, _, _ = await raw(
        "POST", stack.url("/v1alpha/interactions"), headers=stack.headers(), json=BODY
    )
    assert status == 200
    [record] = await stack.records()
    assert record["interaction_id"] == "int-cut"
    # the last usage seen, not the sum of the two cumulative figures, and not final
    assert (record["input_tokens"], record["total_tokens"]) == (4, 5)
    assert record["provisional"] is True
    # a later GET sees the interaction completed: its usage replaces the partial one
    status, _, _ = await raw(
        "GET", stack.url("/v1alpha/interactions/int-cut"), headers=stack.headers()
    )
    assert status == 200
    [record] = await stack.records()
    assert (record["input_tokens"], record["thinking_tokens"], record["total_tokens"]) == (
        10,
        2,
        17,
    )
    assert record["provisional"] is False


async def test_a_keyless_upload_leg_is_never_lent_the_upstream_key(stack: Stack):
    # an authenticated start leg obtains an upload id through the proxy ...
    status, headers, _ = await raw(
        "POST",
        stack.url("/upload/v1beta/files"),
        headers=stack.headers(
            **{"x-goog-upload-protocol": "resumable", "x-goog-upload-command": "start"}
        ),
        json={"file": {"display_name": "a"}},
    )
    assert status == 200
    leg = "/upload/" + headers["x-goog-upload-url"].split("/upload/", 1)[1]
    # ... and the keyless byte leg that follows it goes up with no key at all
    status, _, _ = await raw(
        "POST",
        stack.url(leg),
        headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"},
        data=b"bytes",
    )
    assert status == 200
    start, seen = list(stack.upstream.requests)
    assert start.api_key == UPSTREAM_KEY
    assert seen.api_key is None  # the upstream judges the upload id alone


async def test_an_unreadable_interaction_response_is_still_recorded(
    make_stack: StackFactory, aiohttp_server: Any
):
    upstream = await _gated_upstream(aiohttp_server, asyncio.Event())
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, _, body = await raw(
        "POST", stack.url("/v1/interactions"), headers=stack.headers(), json=BODY
    )
    assert (status, body) == (200, b"<html>oops</html>")  # relayed as it came
    [record] = await stack.records()
    assert record["parse_error"] is True
    assert record["total_tokens"] == 0


async def test_a_deeply_nested_body_is_refused_not_forwarded(stack: Stack):
    nested = b'{"model": "gemini-3.5-flash", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = await raw(
        "POST",
        stack.url(CREATE),
        headers={**stack.headers(), "Content-Type": "application/json"},
        data=nested,
    )
    # the proxy cannot check what it cannot parse, so the upstream never sees it
    assert status == 400
    assert "nests too deeply" in gemini_error(body, 400, "INVALID_ARGUMENT")
    assert list(stack.upstream.requests) == []
    assert await stack.records() == []
