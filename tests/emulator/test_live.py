"""The emulator's Live API and ephemeral tokens, driven directly (no proxy in between).

Every server message is validated strictly against the SDK's ``LiveServerMessage``
(no field it does not know); credentials are checked as Google checks them: an API
key on ``BidiGenerateContent``, a minted, unused token on ``...Constrained``.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google.genai import types

from proxy.emulator import create_emulator_app, emulator_state_key
from tests.factories import assert_strict

SERVICE = "/ws/google.ai.generativelanguage.{v}.GenerativeService.{method}"
PLAIN = SERVICE.format(v="v1beta", method="BidiGenerateContent")
CONSTRAINED = SERVICE.format(v="v1alpha", method="BidiGenerateContentConstrained")


@pytest.fixture
async def emulator(aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(create_emulator_app())
    return server


async def messages_of_turn(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    found = []
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.BINARY
        found.append(json.loads(msg.data))
        assert_strict(types.LiveServerMessage.model_validate(found[-1]))
        if found[-1].get("serverContent", {}).get("turnComplete"):
            return found


async def test_a_session_speaks_the_sdks_shapes_and_keeps_a_ledger(emulator: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(emulator.make_url(PLAIN), headers={"x-goog-api-key": "k"}) as ws,
    ):
        setup = {
            "model": "models/m",
            "systemInstruction": {"parts": [{"text": "Be brief."}]},  # 9 chars: 3 tokens
        }
        await ws.send_str(json.dumps({"setup": setup}))
        assert json.loads((await ws.receive()).data) == {"setupComplete": {}}
        await ws.send_str(json.dumps({"realtimeInput": {"text": "[goaway] hi"}}))
        turn = await messages_of_turn(ws)
    assert turn[0] == {"goAway": {"timeLeft": "10s"}}
    [ledger] = emulator.app[emulator_state_key].live_sessions
    assert ledger.model == "m" and not ledger.constrained
    # The system instruction (3) and "[goaway] hi" (11 chars: 3) are the prompt.
    assert ledger.usages == [turn[-1]["usageMetadata"]]
    assert turn[-1]["usageMetadata"]["promptTokenCount"] == 6


async def test_tokens_are_checked_as_google_checks_them(emulator: TestServer) -> None:
    state = emulator.app[emulator_state_key]
    async with aiohttp.ClientSession() as session:
        async with session.post(
            emulator.make_url("/v1alpha/auth_tokens"),
            headers={"x-goog-api-key": "k"},
            json={"uses": 1, "bidiGenerateContentSetup": {"model": "models/locked"}},
        ) as response:
            assert response.status == 200
            token = (await response.json())["name"]
        assert token.startswith("auth_tokens/") and token in state.auth_tokens
        # A token is no API key, and an API key no token.
        for path, headers in [
            (PLAIN, {"x-goog-api-key": token}),
            (CONSTRAINED, {"x-goog-api-key": "k"}),
            (CONSTRAINED, {"Authorization": "Token auth_tokens/unknown"}),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(emulator.make_url(path), headers=headers)
            assert refused.value.status == 401
        headers = {"Authorization": f"Token {token}"}
        async with session.ws_connect(emulator.make_url(CONSTRAINED), headers=headers) as ws:
            await ws.send_str(json.dumps({"setup": {"model": "models/other"}}))
            await ws.receive()
        # One use, and it is spent.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(emulator.make_url(CONSTRAINED), headers=headers)
    [ledger] = state.live_sessions
    assert (ledger.constrained, ledger.token, ledger.model) == (True, token, "locked")
