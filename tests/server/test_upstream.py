"""The upstream request (``server.upstream``) over real HTTP on both databases: which
key and headers go up, and what a failing upstream becomes."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp.test_utils import TestServer

from proxy.emulator import EmulatorConfig, create_emulator_app
from proxy.server.keys import fingerprint
from tests.factories import (
    INTERACTIONS,
    SAY_HELLO,
    UPSTREAM_KEY,
    Stack,
    StackFactory,
    Tls,
    gemini_error,
    raw,
)
from tests.server.test_client import raw_server, read_request


async def test_the_upstream_never_sees_a_virtual_key(stack: Stack):
    key = stack.keys["alice"]
    for kwargs in (
        {"headers": {"x-goog-api-key": key}},
        {"params": {"key": key, "alt": "json"}},
        {"headers": {"Authorization": f"Bearer {key}"}},
    ):
        status, _, _ = await raw("POST", stack.url(INTERACTIONS), json=SAY_HELLO, **kwargs)
        assert status == 200
    seen = list(stack.upstream.requests)
    assert len(seen) == 3
    for request in seen:
        assert request.api_key == UPSTREAM_KEY
        assert "key" not in request.query
        assert key not in json.dumps(request.headers)
    assert seen[1].query == {"alt": "json"}


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


# A generateContent answer (its usage hand-worked: 7 in, 3 out) with the upstream's own
# hop-by-hop headers, one named only by its Connection header.
_HOP_ANSWERS = {
    "json": (
        "application/json",
        b'{"candidates": [{"content": {"parts": [{"text": "hi"}]}}], '
        b'"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, '
        b'"totalTokenCount": 10}}',
    ),
    "sse": (
        "text/event-stream",
        b'data: {"candidates": [{"content": {"parts": [{"text": "hi"}]}}], '
        b'"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, '
        b'"totalTokenCount": 10}}\r\n\r\n',
    ),
}


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_the_answer_comes_back_without_the_upstreams_hop_by_hop_headers(
    make_stack: StackFactory, kind: str
):
    content_type, body = _HOP_ANSWERS[kind]
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive, X-Hop\r\n"
        "Keep-Alive: timeout=5\r\n"
        "X-Hop: for the proxy only\r\n"
        "X-Kept: yes\r\n\r\n"
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(head.encode() + body)
            await writer.drain()

    async with raw_server(answer) as upstream:
        stack = await make_stack(upstream=upstream.url)
        action = "generateContent" if kind == "json" else "streamGenerateContent?alt=sse"
        status, headers, relayed = await raw(
            "POST",
            stack.url(f"/v1beta/models/gemini-2.5-flash:{action}"),
            headers=stack.headers(),
            json={"contents": [{"parts": [{"text": "hello"}]}]},
        )
        assert status == 200
        assert relayed == body
        lowered = {name.lower(): value for name, value in headers.items()}
        assert lowered["x-kept"] == "yes"
        assert lowered["content-type"] == content_type
        assert "x-hop" not in lowered
        assert lowered.get("keep-alive") != "timeout=5"
        [record] = await stack.records()
        assert (record["input_tokens"], record["output_tokens"]) == (7, 3)


async def test_unreachable_upstream_is_502(make_stack: StackFactory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = await make_stack(upstream=f"http://127.0.0.1:{port}")
    status, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers(), json=SAY_HELLO
    )
    assert status == 502
    gemini_error(body, 502, "UNAVAILABLE")


async def test_silent_upstream_is_504(make_stack: StackFactory):
    stack = await make_stack(upstream_read_timeout_seconds=0.2)
    status, _, body = await raw(
        "POST",
        stack.url(INTERACTIONS),
        headers=stack.headers(**{"x-emulator-delay-ms": "3000"}),
        json=SAY_HELLO,
    )
    assert status == 504
    gemini_error(body, 504, "DEADLINE_EXCEEDED")


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


async def test_passthrough_mode_keeps_the_clients_key_and_names_its_fingerprint(
    make_stack: StackFactory,
):
    own_key = "AIza-client-own-google-key"
    fp = fingerprint(b"test-secret", own_key)
    stack = await make_stack(auth_mode="passthrough", passthrough_aliases={fp: "dana"})
    other_key = "AIza-another-client-key"
    for key in (own_key, other_key):
        status, _, _ = await raw(
            "POST", stack.url(INTERACTIONS), headers={"x-goog-api-key": key}, json=SAY_HELLO
        )
        assert status == 200
    assert [r.api_key for r in stack.upstream.requests] == [own_key, other_key]
    records = await stack.records()
    assert [r["user_id"] for r in records] == [
        await stack.user_id("dana"),
        await stack.user_id(fingerprint(b"test-secret", other_key)),
    ]


async def test_an_https_upstream_is_reached_with_its_certificate_verified(
    make_stack: StackFactory, tls: Tls, monkeypatch: pytest.MonkeyPatch
):
    emulator = TestServer(create_emulator_app(EmulatorConfig()), host="127.0.0.1")
    await emulator.start_server(ssl=tls.server)
    try:
        https = f"https://127.0.0.1:{emulator.port}"
        # The system's trust store does not know the test's certificate: refused, a 502.
        untrusted = await make_stack(upstream=https)
        status, _, body = await raw(
            "POST", untrusted.url(INTERACTIONS), json=SAY_HELLO, headers=untrusted.headers()
        )
        assert status == 502, body
        # Trusted the way a deployment trusts a private CA: SSL_CERT_FILE.
        monkeypatch.setenv("SSL_CERT_FILE", tls.cafile)
        trusted = await make_stack(upstream=https)
        status, _, body = await raw(
            "POST", trusted.url(INTERACTIONS), json=SAY_HELLO, headers=trusted.headers()
        )
        assert status == 200, body
        [record] = await trusted.records()
        assert record["input_tokens"] > 0
    finally:
        await emulator.close()
