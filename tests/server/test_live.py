"""The Live API through the proxy, end to end with google-genai's ``aio.live``.

The proxy is served over TLS (the SDK always opens Live sessions over wss) in
front of the emulator's Live endpoint. Expected figures are worked by hand from
the emulator's documented token rules (``proxy.emulator.live``: text is
ceil(characters / 4) tokens, audio 32 tokens per second, the prompt of a turn
re-reads the whole session so far) and from the rates of this module's own
catalog, and compared with the emulator's ledger of what it reported.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.genai import types
from sqlalchemy import select

from proxy.server.auth import PresentedKey
from proxy.server.keys import fingerprint, hash_key
from proxy.server.typedefs import authenticator_key, budgets_key, sessionmaker_key
from proxy.storage.schema import Base, ResourceKind, make_engine
from tests.factories import (
    RecordingUpstream,
    Stack,
    StackFactory,
    Tls,
    add_budget,
    add_spend,
    assert_strict,
    gemini_error,
    live_sdk,
    sqlite_only,
)

MODEL = "live-meter-test"
# Rates of this test's own catalog, USD per 1M tokens: text input 0.50, audio input 3.00,
# output 2.00. Chosen so every figure below is worked by hand.
CATALOG = f"""
[[models."{MODEL}"]]
effective_from = 2025-01-01
source = "tests/server/test_live.py"
read_on = 2026-11-29
confirmed = true
input = "0.50"
input_by_modality = {{ audio = "3.00" }}
output = "2.00"
cached = "0.05"
cache_storage_per_hour = "1.00"
tiers = {{ flex = "0.5", batch = "0.5", priority = "1.8" }}
"""


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "live-prices.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
async def live_stack(make_stack: StackFactory, tls_proxy_server: Any, catalog_file: Path) -> Stack:
    return await make_stack(serve_proxy=tls_proxy_server, price_catalog=catalog_file)


async def live_records(stack: Stack, count: int = 1) -> list[dict[str, Any]]:
    """The stored Live records, once ``count`` final ones are there (the session's end
    is relayed before its record is handed on, so a test may have to wait a moment)."""
    for _ in range(200):
        rows = [r for r in await stack.records() if r["endpoint"] == "live.session"]
        if sum(not r["provisional"] for r in rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} final Live records; have {rows}")


async def turn(session: Any, text: str) -> list[types.LiveServerMessage]:
    await session.send_client_content(
        turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True
    )
    return [message async for message in session.receive()]


def ledger_sum(stack: Stack, key: str) -> int:
    return sum(
        int(usage.get(key, 0))
        for session in stack.upstream.live_sessions
        for usage in session.usages
    )


async def test_text_session_is_recorded_once_with_every_turn(live_stack: Stack, tls: Tls) -> None:
    client = live_sdk(live_stack, tls)
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        first = await turn(session, "Hello there")
        second = await turn(session, "How are you today?")
    for message in first + second:
        assert_strict(message)  # every field the emulator sent is one the SDK knows
    assert "".join(m.text or "" for m in first) == "You said: Hello there"
    assert "".join(m.text or "" for m in second) == "You said: How are you today?"
    # What the SDK parsed is what the emulator sent: the usage rode through unchanged.
    assert first[-1].usage_metadata is not None
    assert first[-1].usage_metadata.prompt_token_count == 3

    [record] = await live_records(live_stack)
    # Turn 1: "Hello there" (11 chars) = 3 tokens in; "You said: Hello there" (21) = 6 out.
    # Turn 2 re-reads the session (3 + 6) plus "How are you today?" (18 chars = 5): 14 in;
    # "You said: How are you today?" (28) = 7 out. Summed over the turns: 17 in, 13 out.
    assert (record["input_tokens"], record["output_tokens"], record["total_tokens"]) == (17, 13, 30)
    assert record["input_tokens"] == ledger_sum(live_stack, "promptTokenCount")
    assert record["output_tokens"] == ledger_sum(live_stack, "responseTokenCount")
    assert record["model"] == MODEL
    assert record["streamed"] and not record["parse_error"] and not record["client_disconnected"]
    assert record["user_id"] == await live_stack.user_id("alice")
    # 17 x 0.50 / 1M + 13 x 2.00 / 1M = 0.0000085 + 0.000026
    assert record["cost_input_usd"] == Decimal("0.0000085")
    assert record["cost_output_usd"] == Decimal("0.000026")
    assert record["cost_usd"] == Decimal("0.0000345")
    # The upstream saw the upstream key, never alice's.
    [seen] = [r for r in live_stack.upstream.requests if r.path.startswith("/ws/")]
    assert seen.api_key == "upstream-secret-key"


# A Live model of the shipped catalog, whose rates (prices.toml: "input $0.50 (text), $3.00
# (audio / video); output $2.00 (text), $12.00 (audio)", Google's pricing page captured
# 2025-10-08) the audio test's figures are worked from.
NATIVE_AUDIO = "gemini-2.5-flash-native-audio-preview-09-2025"


async def test_audio_is_priced_at_the_audio_rates(
    make_stack: StackFactory, tls_proxy_server: Any, tls: Tls
) -> None:
    stack = await make_stack(serve_proxy=tls_proxy_server)
    client = live_sdk(stack, tls, "bob")
    config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO])
    async with client.aio.live.connect(model=NATIVE_AUDIO, config=config) as session:
        # One second of 16 kHz 16-bit PCM: 32,000 bytes, 32 tokens of audio.
        await session.send_realtime_input(
            audio=types.Blob(data=bytes(32_000), mime_type="audio/pcm;rate=16000")
        )
        await session.send_realtime_input(audio_stream_end=True)
        first = [m async for m in session.receive()]
        # A text turn in the same session re-reads the audio so far (32 + 16 audio tokens).
        second = await turn(session, "Hello there")
    audio = b"".join(m.data or b"" for m in first + second)
    assert len(audio) == 2 * 24_000  # half a second of 24 kHz PCM per turn, as emulated

    [record] = await live_records(stack)
    # Turn 1: 32 audio tokens in, 0.5 s of audio out = 16. Turn 2: the context (48 audio)
    # plus "Hello there" (3 text) in, 16 audio out. In all: 80 audio + 3 text in, 32 out.
    assert (record["input_tokens"], record["output_tokens"]) == (83, 32)
    assert record["modalities"] == {"input": {"audio": 80, "text": 3}, "output": {"audio": 32}}
    assert record["model"] == NATIVE_AUDIO
    # Input: 80 x 3.00 (audio, not the text rate) + 3 x 0.50 = 240 + 1.5 = 241.5 per 1M.
    assert record["cost_input_usd"] == Decimal("0.0002415")
    # Output: 32 x 12.00 (audio, not the text rate 2.00) = 384 per 1M.
    assert record["cost_output_usd"] == Decimal("0.000384")
    assert record["cost_usd"] == Decimal("0.0006255")
    assert record["user_id"] == await stack.user_id("bob")


@sqlite_only
async def test_an_invalid_key_never_reaches_the_upstream(
    make_stack: StackFactory,
    tls_proxy_server: Any,
    recording_upstream: RecordingUpstream,
    tls: Tls,
) -> None:
    stack = await make_stack(upstream=recording_upstream.url, serve_proxy=tls_proxy_server)
    client = live_sdk(stack, tls, key="gm-not-a-key")
    with pytest.raises(Exception) as caught:
        async with client.aio.live.connect(model=MODEL):
            pass
    assert "401" in str(caught.value)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client))
    async with session:
        for path, headers, status in [
            (LIVE_PATH, {}, 401),  # no key at all
            (LIVE_PATH + "?key=gm-not-a-key", {}, 401),
            # a valid key, but no upgrade: nothing is opened upstream for it
            (LIVE_PATH, stack.headers(), 400),
            ("/ws/google.ai.generativelanguage.v1beta.GenerativeService.Other", {}, 404),
            # the route is matched as Google spells it, nothing else
            (LIVE_PATH.replace("v1beta", "V1BETA"), stack.headers(), 404),
            (LIVE_PATH.replace("BidiGenerateContent", "bidigeneratecontent"), stack.headers(), 404),
        ]:
            if status != 400:
                headers = {**headers, **UPGRADE}
            async with session.get(stack.url(path), headers=headers) as response:
                assert response.status == status, path
                gemini_error(await response.read(), status, _STATUS[status])
    assert recording_upstream.received == []


_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}
# A WebSocket handshake's headers (RFC 6455 4.1; the key is the RFC's own example).
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_a_key_in_the_query_is_swapped_out_of_it(live_stack: Stack, tls: Tls) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client))
    live_stack._sessions.append(session)
    url = live_stack.url(f"{LIVE_PATH}?key={live_stack.keys['carol']}&alt=x")
    # Nor does a credential of another scheme go on beside the upstream key.
    async with session.ws_connect(url, headers={"Authorization": "Token elsewhere"}) as ws:
        await ws.send_str(SETUP)
        await ws.receive(timeout=10)
    [seen] = [r for r in live_stack.upstream.requests if r.path.startswith("/ws/")]
    assert seen.query == {"alt": "x"}
    assert seen.headers["x-goog-api-key"] == "upstream-secret-key"
    assert "authorization" not in seen.headers
    [record] = await live_records(live_stack)
    assert record["user_id"] == await live_stack.user_id("carol")


async def test_passthrough_sessions_keep_the_clients_own_key(
    make_stack: StackFactory, tls_proxy_server: Any, catalog_file: Path, tls: Tls
) -> None:
    stack = await make_stack(
        serve_proxy=tls_proxy_server, price_catalog=catalog_file, auth_mode="passthrough"
    )
    client = live_sdk(stack, tls, key="AIza-client-own-key")
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await turn(session, "Hello there")
    [seen] = [r for r in stack.upstream.requests if r.path.startswith("/ws/")]
    assert seen.api_key == "AIza-client-own-key"
    [record] = await live_records(stack)
    fingerprint_user = fingerprint(stack.settings.secret_bytes(), "AIza-client-own-key")
    assert record["user_id"] == await stack.user_id(fingerprint_user)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 6)


LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SETUP = json.dumps({"setup": {"model": f"models/{MODEL}"}})


def content(text: str) -> str:
    return json.dumps(
        {
            "clientContent": {
                "turns": [{"role": "user", "parts": [{"text": text}]}],
                "turnComplete": True,
            }
        }
    )


async def raw_session(
    stack: Stack, tls: Tls, user: str = "alice", path: str = LIVE_PATH
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """A bare WebSocket client on the proxy (for what the SDK cannot do: vanish, close oddly)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client))
    stack._sessions.append(session)
    ws = await session.ws_connect(stack.url(path), headers={"x-goog-api-key": stack.keys[user]})
    return session, ws


async def until_turn_complete(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    messages = []
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg  # Google's frames are binary
        messages.append(json.loads(msg.data))
        if messages[-1].get("serverContent", {}).get("turnComplete"):
            return messages


async def test_frames_are_relayed_as_they_arrive(live_stack: Stack, tls: Tls) -> None:
    """The first chunk of a turn reaches the client while the upstream is holding the
    second: the proxy forwards each frame on its own, never a batch of them."""
    client = live_sdk(live_stack, tls)
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    [ledger] = [None]
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        [ledger] = live_stack.upstream.live_sessions
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="[hold] wait")]),
            turn_complete=True,
        )
        received = session.receive()
        # Were frames held back until the turn ends, this would time out.
        first = await asyncio.wait_for(anext(received), 5)
        assert first.text == "You said: "
        # setupComplete and this chunk are all the upstream has sent so far.
        assert ledger.frames_sent == 2
        live_stack.upstream.live_release.set()
        rest = [message async for message in received]
    assert "".join(m.text or "" for m in rest) == "[hold] wait"
    assert ledger.frames_sent == 5  # then the second chunk, generationComplete, turnComplete


async def test_a_client_that_vanishes_mid_session_is_still_recorded(
    live_stack: Stack, tls: Tls
) -> None:
    session, ws = await raw_session(live_stack, tls)
    await ws.send_str(SETUP)
    assert json.loads((await ws.receive(timeout=10)).data) == {"setupComplete": {}}
    await ws.send_str(content("Hello there"))
    await until_turn_complete(ws)
    await ws.send_str(content("[hold] and then"))
    first = json.loads((await ws.receive(timeout=10)).data)
    assert "modelTurn" in first["serverContent"]
    # Gone without a close frame: the TCP connection just closes under it.
    await session.connector.close()  # type: ignore[union-attr]
    live_stack.upstream.live_release.set()  # the upstream may go on with its turn

    [record] = await live_records(live_stack)
    [ledger] = live_stack.upstream.live_sessions
    assert record["client_disconnected"] and not record["provisional"]
    # The upstream finished the turn the client left (and bills it): the proxy read on
    # until its usage came. Turn 1: 3 in, 6 out; turn 2: (3 + 6) + "[hold] and then"
    # (15 chars = 4) = 13 in, "You said: [hold] and then" (25 chars) = 7 out.
    assert [u["promptTokenCount"] for u in ledger.usages] == [3, 13]
    assert (record["input_tokens"], record["output_tokens"]) == (16, 13)
    assert record["input_tokens"] == ledger_sum(live_stack, "promptTokenCount")
    assert record["output_tokens"] == ledger_sum(live_stack, "responseTokenCount")
    for _ in range(100):
        if ledger.closed:
            break
        await asyncio.sleep(0.05)
    assert ledger.closed  # and the proxy ended the upstream session too
    assert ledger.close_code == 1001  # "going away"


async def test_close_codes_and_reasons_pass_through(live_stack: Stack, tls: Tls) -> None:
    # The upstream's: the emulator refuses a first message that is not a setup with 1007.
    _, ws = await raw_session(live_stack, tls)
    await ws.send_str(json.dumps({"clientContent": {}}))
    msg = await ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1007, "The first message must be a setup message.")
    # The client's: a code of its own reaches the upstream.
    _, ws = await raw_session(live_stack, tls, "bob")
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)
    await ws.close(code=4000, message=b"done here")
    await live_records(live_stack, count=2)
    assert live_stack.upstream.live_sessions[1].close_code == 4000
    records = await live_stack.records()
    assert not any(r["client_disconnected"] for r in records)


async def test_long_sessions_leave_a_provisional_record_that_the_final_one_replaces(
    make_stack: StackFactory, tls_proxy_server: Any, catalog_file: Path, tls: Tls
) -> None:
    stack = await make_stack(
        serve_proxy=tls_proxy_server,
        price_catalog=catalog_file,
        live_provisional_interval_seconds=0,
    )
    await add_budget(stack.app, "user:alice", limit_tokens=1_000_000, mode="enforce")
    await stack.app[budgets_key].refresh()
    _, ws = await raw_session(stack, tls)
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)
    await ws.send_str(content("Hello there"))
    await until_turn_complete(ws)
    # While the session is still open, its usage so far is stored, provisional.
    for _ in range(100):
        rows = [r for r in await stack.records() if r["endpoint"] == "live.session"]
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [(r["provisional"], r["input_tokens"]) for r in rows] == [(True, 3)]
    await ws.send_str(content("How are you today?"))
    await until_turn_complete(ws)
    await ws.close()
    [record] = await live_records(stack)
    # One row, replaced in place: the whole session (17 in, 13 out, as worked above).
    assert (record["provisional"], record["input_tokens"], record["output_tokens"]) == (
        False,
        17,
        13,
    )
    assert record["request_id"] == rows[0]["request_id"]
    # The budget counted the session once: 9 tokens provisionally, then the final 30
    # (17 + 13) in their place, not 39.
    [view] = stack.app[budgets_key].views()
    assert view.spend == 30


async def test_an_upstream_that_vanishes_is_passed_on_and_recorded(
    live_stack: Stack, tls: Tls
) -> None:
    _, ws = await raw_session(live_stack, tls)
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)
    await ws.send_str(content("Hello there"))
    await until_turn_complete(ws)
    await ws.send_str(content("[drop] now"))
    await ws.receive(timeout=10)  # the first chunk, then the upstream's connection drops
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1014)  # "bad gateway"
    [record] = await live_records(live_stack)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 6)
    assert not record["client_disconnected"]


@sqlite_only
async def test_an_exhausted_budget_refuses_the_session_before_any_upstream_connection(
    make_stack: StackFactory,
    tls_proxy_server: Any,
    recording_upstream: RecordingUpstream,
    tls: Tls,
) -> None:
    stack = await make_stack(upstream=recording_upstream.url, serve_proxy=tls_proxy_server)
    await add_budget(stack.app, "user:alice", limit_usd="1.00")
    await add_spend(stack.app, "alice", "1.00")
    await stack.app[budgets_key].refresh()
    client = live_sdk(stack, tls)
    with pytest.raises(Exception) as caught:
        async with client.aio.live.connect(model=MODEL):
            pass
    assert "429" in str(caught.value)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client))
    headers = {**stack.headers(), **UPGRADE}
    async with session, session.get(stack.url(LIVE_PATH), headers=headers) as response:
        assert response.status == 429
        gemini_error(await response.read(), 429, "RESOURCE_EXHAUSTED")
    assert recording_upstream.received == []


CONSTRAINED_PATH = (
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"
)
# The SDK warns that its ephemeral-token support is experimental (live.py, tokens.py).
experimental = pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning")


async def mint(stack: Stack, tls: Tls, user: str = "alice") -> str:
    client = live_sdk(stack, tls, user, version="v1alpha")
    token = await client.aio.auth_tokens.create(
        config=types.CreateAuthTokenConfig(
            uses=1, live_connect_constraints=types.LiveConnectConstraints(model=MODEL)
        )
    )
    assert isinstance(token.name, str)
    return token.name


@experimental
async def test_an_ephemeral_token_is_a_handle_of_the_proxy_and_bills_its_owner(
    live_stack: Stack, tls: Tls
) -> None:
    handle = await mint(live_stack, tls)
    [google_token] = live_stack.upstream.auth_tokens
    # The client holds the proxy's handle; Google's token never left the proxy, and the
    # database holds it only sealed, under the handle's hash.
    assert handle.startswith("auth_tokens/gm-") and handle != google_token
    async with live_stack.app[sessionmaker_key]() as session:
        dump = str((await session.execute(select(Base.metadata.tables["resources"]))).all())
    assert google_token not in dump and handle not in dump
    assert hash_key(live_stack.settings.secret_bytes(), handle) in dump

    # The SDK opens BidiGenerateContentConstrained with the handle ("api_key=token.name").
    client = live_sdk(live_stack, tls, key=handle, version="v1alpha")
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        answer = await turn(session, "Hello there")
    assert "".join(m.text or "" for m in answer) == "You said: Hello there"

    [ledger] = live_stack.upstream.live_sessions
    assert ledger.constrained and ledger.token == google_token
    [seen] = [r for r in live_stack.upstream.requests if r.path.startswith("/ws/")]
    assert handle not in str(seen)  # the upstream never saw the handle
    [record] = await live_records(live_stack)
    assert record["user_id"] == await live_stack.user_id("alice")
    assert (record["input_tokens"], record["output_tokens"], record["model"]) == (3, 6, MODEL)


@experimental
async def test_another_users_handle_is_refused_before_the_upstream(
    make_stack: StackFactory,
    tls_proxy_server: Any,
    recording_upstream: RecordingUpstream,
    tls: Tls,
) -> None:
    stack = await make_stack(upstream=recording_upstream.url, serve_proxy=tls_proxy_server)
    handle = await mint(stack, tls, "alice")
    minted = len(recording_upstream.received)
    assert minted == 1
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client))
    async with session:
        for headers, status in [
            # bob's own key beside alice's handle: not his to use
            ({"x-goog-api-key": stack.keys["bob"], "Authorization": f"Token {handle}"}, 404),
            # a handle the proxy never issued, in each place a client may put it
            ({"Authorization": "Token auth_tokens/gm-made-up"}, 401),
            ({"x-goog-api-key": "auth_tokens/gm-made-up"}, 401),
        ]:
            async with session.get(
                stack.url(CONSTRAINED_PATH), headers={**headers, **UPGRADE}
            ) as response:
                assert response.status == status, headers
        async with session.get(
            stack.url(CONSTRAINED_PATH + "?access_token=auth_tokens/gm-made-up"), headers=UPGRADE
        ) as response:
            assert response.status == 401
        # Nor is a handle an API key, for a plain session or any other call.
        async with session.get(
            stack.url(LIVE_PATH), headers={"x-goog-api-key": handle, **UPGRADE}
        ) as response:
            assert response.status == 401
        async with session.post(
            stack.url(f"/v1beta/models/{MODEL}:generateContent"),
            headers={"x-goog-api-key": handle},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        ) as response:
            assert response.status == 401
        # Google's token itself is no credential at the proxy either.
        async with session.get(
            stack.url(CONSTRAINED_PATH),
            headers={"Authorization": "Token auth_tokens/rec-1", **UPGRADE},
        ) as response:
            assert response.status == 401
    assert len(recording_upstream.received) == minted


async def test_a_session_open_at_shutdown_is_recorded(
    make_stack: StackFactory, tls_proxy_server: Any, catalog_file: Path, tls: Tls
) -> None:
    live_stack = await make_stack(
        serve_proxy=tls_proxy_server, price_catalog=catalog_file, shutdown_grace_seconds=0.5
    )
    _, ws = await raw_session(live_stack, tls)
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)
    await ws.send_str(content("Hello there"))
    await until_turn_complete(ws)
    closing = asyncio.create_task(ws.receive(timeout=10))  # a client that answers a close
    started = time.monotonic()
    await live_stack.proxy.close()  # the app's cleanup runs: writer flushed, engine disposed
    assert time.monotonic() - started < 10
    engine = make_engine(live_stack.settings.database_url)
    try:
        async with engine.connect() as connection:
            table = Base.metadata.tables["usage_records"]
            rows = (await connection.execute(select(table))).mappings().all()
    finally:
        await engine.dispose()
    [record] = rows
    assert (record["endpoint"], record["provisional"]) == ("live.session", False)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 6)
    assert not record["client_disconnected"]
    # Cut after the grace period: both sides were told the proxy is going away.
    assert (await closing).data == 1001
    [ledger] = live_stack.upstream.live_sessions
    assert ledger.closed and ledger.close_code == 1001


@experimental
async def test_passthrough_tokens_bill_whoever_minted_them_through_the_proxy(
    make_stack: StackFactory, tls_proxy_server: Any, catalog_file: Path, tls: Tls
) -> None:
    stack = await make_stack(
        serve_proxy=tls_proxy_server, price_catalog=catalog_file, auth_mode="passthrough"
    )
    minting = live_sdk(stack, tls, key="AIza-client-own-key", version="v1alpha")
    token = await minting.aio.auth_tokens.create(config=types.CreateAuthTokenConfig(uses=1))
    assert isinstance(token.name, str)
    # Passthrough: the client's own key minted it, and the client holds Google's token.
    assert token.name in stack.upstream.auth_tokens
    client = live_sdk(stack, tls, key=token.name, version="v1alpha")
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await turn(session, "Hello there")
    [ledger] = stack.upstream.live_sessions
    assert ledger.constrained and ledger.token == token.name
    [session_record] = await live_records(stack)
    records = await stack.records()
    [mint_record] = [r for r in records if r["endpoint"] == "auth_token.create"]
    minter_id = await stack.user_id(
        fingerprint(stack.settings.secret_bytes(), "AIza-client-own-key")
    )
    assert mint_record["user_id"] == session_record["user_id"] == minter_id
    assert (session_record["input_tokens"], session_record["output_tokens"]) == (3, 6)


async def test_a_session_that_uses_up_a_budget_is_closed_after_that_turn(
    make_stack: StackFactory, tls_proxy_server: Any, catalog_file: Path, tls: Tls
) -> None:
    stack = await make_stack(
        serve_proxy=tls_proxy_server,
        price_catalog=catalog_file,
        live_provisional_interval_seconds=0,
        # Nothing reserved at open: only the settled usage counts against the budget here.
        budget_default_output_tokens=0,
        budget_reserve_tokens=0,
    )
    await add_budget(stack.app, "user:alice", limit_tokens=20, mode="enforce")
    await stack.app[budgets_key].refresh()
    _, ws = await raw_session(stack, tls)
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)
    await ws.send_str(content("Hello there"))
    await until_turn_complete(ws)  # 9 tokens so far: within 20
    await ws.send_str(content("How are you today?"))
    await until_turn_complete(ws)  # 9 + 21 = 30: the budget is used up
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)  # "policy violation"
    assert msg.extra is not None  # the close frame's reason
    assert "budget" in msg.extra.lower()
    [record] = await live_records(stack)
    assert (record["input_tokens"], record["output_tokens"]) == (17, 13)
    assert not record["client_disconnected"]
    [ledger] = stack.upstream.live_sessions
    for _ in range(100):
        if ledger.closed:
            break
        await asyncio.sleep(0.05)
    assert ledger.closed and ledger.close_code == 1000


def naming_file(name: str) -> str:
    return json.dumps(
        {
            "clientContent": {
                "turns": [
                    {
                        "role": "user",
                        "parts": [
                            {"text": "What is in this file?"},
                            {"fileData": {"fileUri": name, "mimeType": "text/plain"}},
                        ],
                    }
                ],
                "turnComplete": True,
            }
        }
    )


async def test_a_message_naming_someone_elses_file_or_cache_is_never_forwarded(
    live_stack: Stack, tls: Tls
) -> None:
    auth = live_stack.app[authenticator_key]
    alice = await auth.authenticate(PresentedKey(live_stack.keys["alice"], "header"))
    await auth.commit_resource(ResourceKind.FILE, "files/alices-notes", alice)
    await auth.commit_resource(ResourceKind.CACHED_CONTENT, "cachedContents/alices", alice)

    # bob names alice's file in a turn: the session is closed, the turn never sent on
    _, ws = await raw_session(live_stack, tls, "bob")
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)  # setupComplete
    await ws.send_str(naming_file("https://example.invalid/v1beta/files/alices-notes"))
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert msg.extra is not None  # the close frame's reason
    assert "not found" in msg.extra.lower()
    [bobs] = live_stack.upstream.live_sessions
    assert bobs.usages == []  # the emulator never saw the turn

    # a setup naming alice's cache: refused before the setup itself reaches the upstream
    _, ws = await raw_session(live_stack, tls, "bob")
    await ws.send_str(
        json.dumps({"setup": {"model": f"models/{MODEL}", "cachedContent": "alices"}})
    )
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert live_stack.upstream.live_sessions[-1].frames_sent == 0  # not even setupComplete

    # the same with the field's name spelled by a JSON escape, which Google reads as
    # "cachedContent" too
    _, ws = await raw_session(live_stack, tls, "bob")
    escaped = json.dumps({"setup": {"model": f"models/{MODEL}", "cachedContent": "alices"}})
    await ws.send_str(escaped.replace("cachedContent", "cached\\u0043ontent"))
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    assert live_stack.upstream.live_sessions[-1].frames_sent == 0

    # alice's own file goes through
    _, ws = await raw_session(live_stack, tls, "alice")
    await ws.send_str(SETUP)
    await ws.receive(timeout=10)
    await ws.send_str(naming_file("files/alices-notes"))
    await until_turn_complete(ws)
    assert len(live_stack.upstream.live_sessions[-1].usages) == 1
