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
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.genai import errors, types

from tests.factories import (
    RecordingUpstream,
    Stack,
    StackFactory,
    Tls,
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


async def test_audio_is_priced_at_the_audio_rate(live_stack: Stack, tls: Tls) -> None:
    client = live_sdk(live_stack, tls, "bob")
    config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO])
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        # One second of 16 kHz 16-bit PCM: 32,000 bytes, 32 tokens of audio.
        await session.send_realtime_input(
            audio=types.Blob(data=bytes(32_000), mime_type="audio/pcm;rate=16000")
        )
        await session.send_realtime_input(audio_stream_end=True)
        messages = [m async for m in session.receive()]
    audio = b"".join(m.data or b"" for m in messages)
    assert len(audio) == 24_000  # half a second of 24 kHz PCM, as the emulator sends

    [record] = await live_records(live_stack)
    # 32 audio tokens in; 0.5 s of output audio = 16 tokens out.
    assert (record["input_tokens"], record["output_tokens"]) == (32, 16)
    assert record["modalities"] == {"input": {"audio": 32}, "output": {"audio": 16}}
    # 32 x 3.00 / 1M (the audio rate, not the text rate 0.50) + 16 x 2.00 / 1M
    assert record["cost_input_usd"] == Decimal("0.000096")
    assert record["cost_usd"] == Decimal("0.000128")
    assert record["user_id"] == await live_stack.user_id("bob")


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
    assert recording_upstream.received == []
    assert isinstance(errors.APIError, type)
