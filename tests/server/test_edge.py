"""The edge: what the proxy refuses, decodes or answers before (or instead of) the upstream.

Field masks on metered routes, compressed request bodies, keyless upload legs,
requests aiohttp cannot parse, and upstreams that break the protocol. Every
"refused" is an assertion on what reached the recording upstream.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from proxy.server.app import create_app
from proxy.server.typedefs import keyless_uploads_key, metrics_key, sessionmaker_key
from proxy.settings import Settings, SettingsError
from tests.factories import (
    RECORDED_UPLOAD_ID,
    RecordingUpstream,
    Stack,
    StackFactory,
    gemini_error,
    raw,
    send_raw,
    sqlite_only,
)
from tests.faults.helpers import free_port

CREATE = "/v1beta/interactions"
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
BODY = {"model": "gemini-2.5-pro", "input": "Say hello."}
CONTENTS = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


# --- field masks and encodings ------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?fields=id", {}),
        ("?$fields=candidates", {}),
        ("?%24fields=id", {}),
        ("", {"X-Goog-FieldMask": "id"}),
        ("?alt=proto", {}),
        ("?alt=media", {}),
        ("?$alt=PROTO", {}),
        ("?callback=f", {}),
        ("?$ct=application%2Fx-protobuf", {}),
    ],
    ids=["fields", "$fields", "%24fields", "header", "proto", "media", "$alt", "jsonp", "$ct"],
)
@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", CREATE, BODY),
        ("GET", f"{CREATE}/int-x", None),
        ("POST", GENERATE, CONTENTS),
        ("POST", STREAM, CONTENTS),
    ],
    ids=["create", "get", "generate", "stream"],
)
async def test_usage_stripping_parameters_are_refused_on_metered_routes(
    make_stack: StackFactory,
    recording_upstream: RecordingUpstream,
    query: str,
    headers: dict[str, str],
    method: str,
    path: str,
    payload: Any,
):
    stack = await make_stack(upstream=recording_upstream.url)
    status, _, body = await raw(
        method, stack.url(path + query), headers=stack.headers(**headers), json=payload
    )
    assert status == 400
    message = gemini_error(body, 400, "INVALID_ARGUMENT")
    assert "usage" in message
    assert recording_upstream.received == []
    assert await stack.records() == []


@sqlite_only
async def test_harmless_system_parameters_pass(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    for path in (f"{STREAM}?alt=sse&prettyPrint=false", f"{GENERATE}?$alt=json&$.xgafv=2"):
        status, _, _ = await raw("POST", stack.url(path), headers=stack.headers(), json=CONTENTS)
        assert status == 200
    # not metered, so not the meter's business
    status, _, _ = await raw(
        "GET", stack.url("/v1beta/models?fields=models.name"), headers=stack.headers()
    )
    assert status == 200
    assert len(recording_upstream.received) == 3


# --- compressed request bodies ------------------------------------------------------------

COMPRESS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}


@sqlite_only
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_metered_body_is_read_and_forwarded_decoded(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, encoding: str
):
    stack = await make_stack(upstream=recording_upstream.url)
    plain = json.dumps(BODY).encode()
    status, _, _ = await raw(
        "POST",
        stack.url(CREATE),
        headers=stack.headers(**{"Content-Encoding": encoding, "Content-Type": "application/json"}),
        data=COMPRESS[encoding](plain),
    )
    assert status == 200
    [seen] = recording_upstream.received
    assert seen.body == plain
    assert "content-encoding" not in seen.headers
    assert int(seen.headers["content-length"]) == len(plain)
    [record] = await stack.records()
    # the model came from the (compressed) request body, not from the upstream's answer
    assert record["model"] == "gemini-2.5-pro"


@sqlite_only
async def test_a_compressed_body_cannot_hide_a_previous_interaction(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    _, _, body = await raw("POST", stack.url(CREATE), headers=stack.headers("alice"), json=BODY)
    iid = json.loads(body)["id"]
    recording_upstream.received.clear()
    follow = gzip.compress(json.dumps({**BODY, "previousInteractionId": iid}).encode())
    status, _, _ = await raw(
        "POST",
        stack.url(CREATE),
        headers=stack.headers("bob", **{"Content-Encoding": "gzip"}),
        data=follow,
    )
    assert status == 404
    assert recording_upstream.received == []


@sqlite_only
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_unmetered_body_arrives_whole(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, encoding: str
):
    stack = await make_stack(upstream=recording_upstream.url)
    plain = json.dumps({"contents": [{"parts": [{"text": "word " * 50_000}]}]}).encode()
    packed = COMPRESS[encoding](plain)
    assert len(packed) < len(plain) // 10
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/models/gemini-2.5-flash:countTokens"),
        headers=stack.headers(**{"Content-Encoding": encoding, "Content-Type": "application/json"}),
        data=packed,
    )
    assert status == 200
    [seen] = recording_upstream.received
    assert seen.body == plain  # all of it, not cut to the compressed length
    assert "content-encoding" not in seen.headers
    assert seen.headers.get("content-length", str(len(plain))) == str(len(plain))


# --- resumable uploads --------------------------------------------------------------------


async def _start_upload(stack: Stack) -> str:
    """An authenticated start leg through the proxy; the byte legs' path and query."""
    status, headers, _ = await raw(
        "POST",
        stack.url("/upload/v1beta/files"),
        headers=stack.headers(
            **{"x-goog-upload-protocol": "resumable", "x-goog-upload-command": "start"}
        ),
        json={"file": {"display_name": "notes"}},
    )
    assert status == 200
    return "/upload/" + headers["x-goog-upload-url"].split("/upload/", 1)[1]


def _leg_head(target: str, length: int) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"x-goog-upload-command: upload, finalize\r\nx-goog-upload-offset: 0\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_keyless_legs_only_for_uploads_started_through_the_proxy(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    status, _, body = await raw(
        "POST", stack.url(f"/upload/v1beta/files?upload_id={RECORDED_UPLOAD_ID}1"), data=b"x"
    )
    assert status == 404
    message = gemini_error(body, 404, "NOT_FOUND")
    assert RECORDED_UPLOAD_ID not in message
    assert recording_upstream.received == []

    leg = await _start_upload(stack)
    upload_id = leg.split("upload_id=")[1].split("&")[0]
    status, _, _ = await raw("POST", stack.url(leg), data=b"file bytes")
    assert status == 200
    start, byte_leg = recording_upstream.received
    assert "x-goog-api-key" in start.headers
    assert "x-goog-api-key" not in byte_leg.headers and byte_leg.body == b"file bytes"
    # the database keeps a keyed hash of the id, never the id
    async with stack.app[sessionmaker_key]() as session:
        rows = (await session.execute(text("SELECT * FROM upload_sessions"))).all()
    assert len(rows) == 1
    assert upload_id not in repr(rows)
    assert rows[0].user_id == await stack.user_id("alice")


async def test_an_upload_started_on_one_replica_continues_on_another(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, proxy_server: Any
):
    stack = await make_stack(upstream=recording_upstream.url)
    replica = await proxy_server(create_app(stack.settings, registry=CollectorRegistry()))
    leg = await _start_upload(stack)
    status, _, _ = await raw("POST", str(replica.make_url(leg)), data=b"via the replica")
    assert status == 200
    assert recording_upstream.received[-1].body == b"via the replica"


async def test_an_upload_id_expires(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url, upload_session_ttl_seconds=0.05)
    leg = await _start_upload(stack)
    await asyncio.sleep(0.2)
    status, _, _ = await raw("POST", stack.url(leg), data=b"late")
    assert status == 404
    assert len(recording_upstream.received) == 1  # the start leg only


async def test_slow_keyless_legs_cannot_starve_other_calls(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(
        upstream=recording_upstream.url, keyless_upload_limit=2, upstream_pool_size=3
    )
    leg = await _start_upload(stack)
    host, port = stack.proxy.host, stack.proxy.port
    held: list[asyncio.StreamWriter] = []
    try:
        # Two slow legs of a real upload take the two keyless slots (and upstream
        # connections), sending a few bytes of a body they never finish.
        for _ in range(2):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(_leg_head(leg, 1_000_000) + b"x" * 10)
            await writer.drain()
            held.append(writer)
        limiter = stack.app[keyless_uploads_key]
        for _ in range(500):
            if limiter.locked():
                break
            await asyncio.sleep(0.01)
        assert limiter.locked()
        # More legs of the same upload are refused at once, not queued behind them ...
        for _ in range(5):
            status, _, body = await send_raw(host, port, _leg_head(leg, 5) + b"xxxxx")
            assert status == 503
            gemini_error(body, 503, "UNAVAILABLE")
        # ... legs of an upload nobody started are refused before any slot is looked at ...
        unknown = f"/upload/v1beta/files?upload_id={RECORDED_UPLOAD_ID}999"
        for _ in range(20):
            status, _, _ = await send_raw(host, port, _leg_head(unknown, 1_000_000) + b"x")
            assert status == 404
        # ... and keyed calls still get an upstream connection meanwhile.
        status, _, _ = await asyncio.wait_for(
            raw("POST", stack.url(GENERATE), headers=stack.headers(), json=CONTENTS), timeout=30
        )
        assert status == 200
    finally:
        for writer in held:
            writer.close()
    refusals = stack.app[metrics_key].keyless_upload_refusals
    assert refusals.labels("busy")._value.get() == 5
    assert refusals.labels("unknown_upload")._value.get() == 20
    # nothing of the refused legs reached the upstream: the start leg and the keyed call
    # (the two held legs never completed their bodies, so the upstream recorded neither)
    assert [r.raw_path.split("?")[0] for r in recording_upstream.received] == [
        "/upload/v1beta/files",
        GENERATE,
    ]


@sqlite_only
async def test_a_stalled_keyless_leg_is_cut_and_frees_its_slot(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(
        upstream=recording_upstream.url,
        keyless_upload_limit=1,
        keyless_upload_idle_timeout_seconds=0.2,
    )
    leg = await _start_upload(stack)
    host, port = stack.proxy.host, stack.proxy.port
    status, _, body = await send_raw(host, port, _leg_head(leg, 100) + b"x" * 10)
    assert status == 408
    gemini_error(body, 408, "DEADLINE_EXCEEDED")
    assert not stack.app[keyless_uploads_key].locked()
    status, _, _ = await raw("POST", stack.url(leg), data=b"now whole")
    assert status == 200


# --- requests aiohttp cannot parse ---------------------------------------------------------

SECRET = "gm-this-key-must-never-be-logged"


def _malformed(kind: str) -> bytes:
    if kind == "long-url":
        pad = "a" * 20_000
        return f"GET /v1beta/models?key={SECRET}&pad={pad} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    if kind == "bad-line":
        return f"GET /v1beta/models?key={SECRET} HTTP/9.x\r\nHost: x\r\n\r\n".encode()
    if kind == "bad-method":
        return f"G(T /v1beta/models?key={SECRET} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    if kind == "many-headers":
        lines = "".join(f"X-H{i}: {SECRET}\r\n" for i in range(300))
        return f"GET /v1beta/models?key={SECRET} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
    if kind == "big-header":
        return (
            "GET /v1beta/models HTTP/1.1\r\nHost: x\r\n"
            f"x-goog-api-key: {SECRET}{'a' * 20_000}\r\n\r\n"
        ).encode()
    if kind == "cl-and-te":
        return (
            f"POST /v1beta/models?key={SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ).encode()
    raise AssertionError(kind)


KINDS = ["long-url", "bad-line", "bad-method", "many-headers", "big-header", "cl-and-te"]


@sqlite_only
@pytest.mark.parametrize("kind", KINDS)
async def test_unparseable_requests_get_gemini_errors_and_leak_no_key(
    stack: Stack, kind: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
):
    caplog.set_level(logging.DEBUG)
    status, head, body = await send_raw(stack.proxy.host, stack.proxy.port, _malformed(kind))
    assert 400 <= status < 500
    assert b"application/json" in head
    gemini_error(body, status, "INVALID_ARGUMENT")
    assert SECRET.encode() not in head + body
    assert SECRET not in caplog.text
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    assert list(stack.upstream.requests) == []


async def _serve_listening(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    """``gemini-meter serve`` on a free port, once it says it listens.

    Its own log line, not an answer on the port, says so: a port found free can be taken
    again meanwhile by another test's server, whose answers would not be this process's.
    """
    for _ in range(5):
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "proxy.cli.main", "serve", "--port", str(port)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        while line := await asyncio.wait_for(process.stderr.readline(), 60):
            if f"Gemini Meter on http://127.0.0.1:{port} ".encode() in line:
                return process, port
        await process.wait()  # it could not listen there: another port
    raise AssertionError("gemini-meter serve never listened")


async def test_the_serve_command_answers_malformed_requests_in_gemini_shape(tmp_path: Path):
    env = {
        **os.environ,
        "GEMINI_METER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
        "GEMINI_METER_KEY_SECRET_FILE": str(tmp_path / "secret"),
        "GEMINI_METER_UPSTREAM_API_KEY": "upstream-key",
        "GEMINI_METER_UPSTREAM": "http://127.0.0.1:9",
        "GEMINI_METER_LOG_LEVEL": "INFO",
    }
    process, port = await _serve_listening(env)
    try:
        status, _, _ = await raw("GET", f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        answers = [await send_raw("127.0.0.1", port, _malformed(kind)) for kind in KINDS]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0  # SIGTERM is a clean stop
    for kind, (status, head, body) in zip(KINDS, answers, strict=True):
        assert 400 <= status < 500, kind
        gemini_error(body, status, "INVALID_ARGUMENT")
        assert SECRET.encode() not in head + body
    assert SECRET.encode() not in out + err
    assert b"refused a request aiohttp could not parse" in err


# --- upstreams that break the protocol ---------------------------------------------------


async def _broken_upstream(answer: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


BAD_STATUS = b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}"
BAD_CHUNKS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5\r\n{"a":\r\nzz\r\nnot a chunk\r\n'
)


@sqlite_only
@pytest.mark.parametrize(
    ("answer", "method", "path", "payload"),
    [
        (BAD_STATUS, "POST", GENERATE, CONTENTS),
        (BAD_STATUS, "GET", "/v1beta/models", None),
        (BAD_CHUNKS, "POST", GENERATE, CONTENTS),
        (BAD_CHUNKS, "POST", CREATE, BODY),
    ],
    ids=["status-metered", "status-unmetered", "chunks-generate", "chunks-create"],
)
async def test_upstream_protocol_errors_are_502(
    make_stack: StackFactory, answer: bytes, method: str, path: str, payload: Any
):
    server, url = await _broken_upstream(answer)
    try:
        stack = await make_stack(upstream=url)
        status, _, body = await raw(method, stack.url(path), headers=stack.headers(), json=payload)
    finally:
        server.close()
    assert status == 502
    gemini_error(body, 502, "UNAVAILABLE")


def test_keyless_upload_legs_must_leave_room_in_the_pool(tmp_path: Path):
    common: dict[str, Any] = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"}
    with pytest.raises(SettingsError, match="keyless_upload_limit"):
        Settings(**common, upstream_pool_size=8, keyless_upload_limit=8)
    assert (
        Settings(**common, upstream_pool_size=8, keyless_upload_limit=7).keyless_upload_limit == 7
    )
