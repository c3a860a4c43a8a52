"""Admission (``server.admission``) over real HTTP on both databases: what is refused
before anything reaches the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from proxy.server.typedefs import sessionmaker_key
from proxy.storage import accounts
from tests.factories import (
    INTERACTIONS,
    SAY_HELLO,
    Stack,
    StackFactory,
    gemini_error,
    raw,
)


async def test_unknown_key_is_refused_and_not_forwarded(stack: Stack):
    status, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers={"x-goog-api-key": "gm-not-a-key"}, json=SAY_HELLO
    )
    message = gemini_error(body, 401, "UNAUTHENTICATED")
    assert "gm-not-a-key" not in message
    status2, _, body2 = await raw("POST", stack.url(INTERACTIONS), json=SAY_HELLO)
    gemini_error(body2, 401, "UNAUTHENTICATED")
    assert (status, status2) == (401, 401)
    assert list(stack.upstream.requests) == []
    assert await stack.records() == []


async def test_revoked_key_stops_working_within_the_ttl(make_stack: StackFactory):
    stack = await make_stack(key_cache_ttl_seconds=0)
    assert (await raw("POST", stack.url(INTERACTIONS), headers=stack.headers(), json=SAY_HELLO))[
        0
    ] == 200
    async with stack.app[sessionmaker_key]() as session:
        [info] = [k for k in await accounts.list_keys(session) if k.user == "alice"]
        assert await accounts.revoke_key(session, info.id)
        await session.commit()
    status, _, body = await raw(
        "POST", stack.url(INTERACTIONS), headers=stack.headers(), json=SAY_HELLO
    )
    assert status == 401
    gemini_error(body, 401, "UNAUTHENTICATED")


async def test_request_size_is_capped(make_stack: StackFactory):
    stack = await make_stack(max_request_bytes=1000)
    big = {"model": "gemini-3.5-flash", "input": "x" * 2000}
    status, _, body = await raw("POST", stack.url(INTERACTIONS), headers=stack.headers(), json=big)
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


async def test_a_deeply_nested_body_is_refused_not_forwarded(stack: Stack):
    nested = b'{"model": "gemini-3.5-flash", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = await raw(
        "POST",
        stack.url(INTERACTIONS),
        headers={**stack.headers(), "Content-Type": "application/json"},
        data=nested,
    )
    # the proxy cannot check what it cannot parse, so the upstream never sees it
    assert status == 400
    assert "nests too deeply" in gemini_error(body, 400, "INVALID_ARGUMENT")
    assert list(stack.upstream.requests) == []
    assert await stack.records() == []
