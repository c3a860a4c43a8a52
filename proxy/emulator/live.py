"""The Live API (``BidiGenerateContent`` over WebSocket) and ephemeral tokens.

- ``GET /ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateContent``
  upgraded to a WebSocket, authenticated by an API key (``x-goog-api-key`` or
  ``?key=``), and ``...BidiGenerateContentConstrained``, authenticated by an
  ephemeral token this emulator minted (``Authorization: Token auth_tokens/...``
  or ``?access_token=``). The URL, headers and the first message (``{"setup":
  {"model": "models/...", "generationConfig": {"responseModalities": [...]}}}``)
  are what google-genai 3.6.1 ``live.py`` (``AsyncLive.connect``) sends.
- The first client message must be ``setup``; the answer is ``{"setupComplete":
  {}}``. Then ``clientContent`` (``turns``, ``turnComplete``), ``realtimeInput``
  (``text``; ``audio`` chunks, answered on ``audioStreamEnd`` or
  ``activityEnd``) each make one model turn: ``serverContent.modelTurn`` chunks
  (text parts, or ``inlineData`` PCM audio at 24 kHz when the setup asks for
  ``AUDIO``), ``serverContent.generationComplete``, then
  ``serverContent.turnComplete`` with the turn's ``usageMetadata``. Shapes are
  the SDK's ``LiveServerMessage`` / ``LiveServerContent`` / ``UsageMetadata``
  (``types.py``) in the wire's camelCase; Google's docs show ``usageMetadata``
  as a field of the server message beside ``serverContent``
  (https://ai.google.dev/api/live#bidigeneratecontentservermessage, read 2026-11-29).
  Server messages go out as binary frames: the SDK reads them with
  ``recv(decode=False)`` and ``json.loads`` the bytes.
- Usage of a turn, as Google bills it (see ``proxy.metering.live``): the prompt
  is the whole session context (system instruction, every earlier turn's input
  and output) plus the new input, so it grows turn by turn. Text is
  ``ceil(characters / 4)`` tokens; audio 32 tokens per second (Google's
  "Understand and count tokens" page), i.e. one token per 1,000 bytes of 16 kHz
  16-bit input PCM and per 1,500 bytes of 24 kHz output PCM. Every
  ``usageMetadata`` sent is kept in the session's ledger (``LiveLedger``).
- Triggers in a turn's text: ``[hold]`` pauses the turn after its first chunk
  until a test sets ``EmulatorState.live_release``; ``[drop]`` aborts the
  connection after the first chunk (the upstream vanishing); ``[goaway]`` sends
  ``goAway`` first.
- ``POST /{v}/auth_tokens`` mints a token (``{"name": "auth_tokens/..."}``),
  reading ``uses`` (default 1), ``expireTime``, ``newSessionExpireTime`` and a
  model locked by ``bidiGenerateContentSetup`` as the SDK's
  ``_CreateAuthTokenConfig_to_mldev`` sends them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from aiohttp import web

from .state import emulator_state_key
from .usage import Tokens, Usage, add_tokens, live_usage_metadata, text_tokens
from .wire import (
    DEFAULT_TIER,
    ApiError,
    Json,
    as_list,
    drop_connection,
    get_field,
    json_body,
    json_response,
)

_SERVICE: Final = re.compile(
    r"^google\.ai\.generativelanguage\.(?P<version>v1beta|v1alpha)\.GenerativeService\."
    r"(?P<method>BidiGenerateContent|BidiGenerateContentConstrained)$"
)
# 32 tokens per second of audio (ai.google.dev/gemini-api/docs/tokens); PCM is 16-bit mono.
AUDIO_TOKENS_PER_SECOND: Final = 32
INPUT_AUDIO_BYTES_PER_TOKEN: Final = 16_000 * 2 // AUDIO_TOKENS_PER_SECOND  # 1,000
OUTPUT_AUDIO_BYTES_PER_TOKEN: Final = 24_000 * 2 // AUDIO_TOKENS_PER_SECOND  # 1,500
# Each audio answer is half a second of 24 kHz PCM silence, in two chunks.
OUTPUT_AUDIO_BYTES: Final = 24_000
OUTPUT_AUDIO_MIME: Final = "audio/pcm;rate=24000"
TOKEN_PREFIX: Final = "auth_tokens/"


@dataclass
class LiveLedger:
    """One Live session as the emulator served it: what a test compares the meter with."""

    model: str | None = None
    constrained: bool = False
    token: str | None = None
    # every usageMetadata sent, in order (one per model turn)
    usages: list[Json] = field(default_factory=list)
    frames_sent: int = 0
    closed: bool = False
    # the close code the client sent (None: it never sent one)
    close_code: int | None = None


@dataclass
class AuthGrant:
    """An ephemeral token minted here."""

    api_key: str
    uses: int | None  # None: no limit
    model: str | None


def live_token_of(request: web.Request) -> str | None:
    """The ephemeral token a Constrained session presents, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "token" and token.strip():
        return token.strip()
    return request.query.get("access_token") or None


async def create_auth_token(request: web.Request) -> web.Response:
    state = request.app[emulator_state_key]
    body = await json_body(request)
    uses = get_field(body, "uses")
    if uses is not None and (type(uses) is not int or uses < 0):
        raise ApiError(400, "Invalid value at 'uses' (TYPE_INT32).")
    setup = get_field(body, "bidiGenerateContentSetup")
    model = get_field(setup, "model") if isinstance(setup, dict) else None
    name = TOKEN_PREFIX + secrets.token_urlsafe(24)
    state.auth_tokens[name] = AuthGrant(
        api_key=request.headers.get("x-goog-api-key") or request.query.get("key", ""),
        # "If this value is zero then no limit is applied ... If unspecified, the default
        # is 1" (the SDK's AuthToken.uses).
        uses=None if uses == 0 else 1 if uses is None else uses,
        model=model.removeprefix("models/") if isinstance(model, str) else None,
    )
    return json_response({"name": name}, DEFAULT_TIER)


async def live_session(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    m = _SERVICE.match(request.match_info["service"])
    if m is None:
        raise ApiError(404, f"The requested URL {request.path} was not found on this server.")
    ledger = LiveLedger(constrained=m.group("method").endswith("Constrained"))
    if ledger.constrained:
        token = live_token_of(request)
        grant = state.auth_tokens.get(token) if token is not None else None
        if token is None or grant is None or grant.uses == 0:
            raise ApiError(401, "The ephemeral token is not valid or has been used up.")
        if grant.uses is not None:
            grant.uses -= 1
        ledger.token = token
        ledger.model = grant.model
    else:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key or key.startswith(TOKEN_PREFIX):
            raise ApiError(401, "API key not valid. Please pass a valid API key.")
    ws = web.WebSocketResponse(max_msg_size=64 * 1024**2)
    await ws.prepare(request)
    state.live_sessions.append(ledger)
    try:
        await _serve(request, ws, ledger, state.live_release)
    finally:
        ledger.closed = True
        ledger.close_code = ws.close_code
    return ws


@dataclass
class _Turn:
    text: str = ""
    audio_bytes: int = 0

    def input_tokens(self) -> Tokens:
        return add_tokens(
            {"text": text_tokens(len(self.text))},
            {"audio": math.ceil(self.audio_bytes / INPUT_AUDIO_BYTES_PER_TOKEN)},
        )


async def _serve(
    request: web.Request, ws: web.WebSocketResponse, ledger: LiveLedger, release: asyncio.Event
) -> None:
    first = await ws.receive()
    setup = _message(first).get("setup")
    if not isinstance(setup, dict):
        await ws.close(code=1007, message=b"The first message must be a setup message.")
        return
    model = get_field(setup, "model")
    if ledger.model is None and isinstance(model, str):
        ledger.model = model.removeprefix("models/")
    config = get_field(setup, "generationConfig")
    modalities = get_field(config, "responseModalities") if isinstance(config, dict) else None
    audio = isinstance(modalities, list) and "AUDIO" in [str(x).upper() for x in modalities]
    # The session's context: what every later turn's prompt re-reads (and is billed for).
    context = add_tokens(
        {"text": text_tokens(len(_text_of(get_field(setup, "systemInstruction"))))}
    )
    await _send(ws, ledger, {"setupComplete": {}})
    turn = _Turn()
    async for msg in ws:
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            break
        message = _message(msg)
        content = get_field(message, "clientContent")
        realtime = get_field(message, "realtimeInput")
        ready = False
        if isinstance(content, dict):
            for item in as_list(get_field(content, "turns")):
                turn.text += _text_of(item)
            ready = get_field(content, "turnComplete") is True
        elif isinstance(realtime, dict):
            text = get_field(realtime, "text")
            if isinstance(text, str):
                turn.text += text
                ready = True
            for blob in [
                get_field(realtime, "audio"),
                *as_list(get_field(realtime, "mediaChunks")),
            ]:
                data = get_field(blob, "data") if isinstance(blob, dict) else None
                if isinstance(data, str):
                    turn.audio_bytes += len(base64.b64decode(data))
            ends = (get_field(realtime, "audioStreamEnd"), get_field(realtime, "activityEnd"))
            ready = ready or any(x is True or isinstance(x, dict) for x in ends)
        if not ready:
            continue
        output = await _answer(request, ws, ledger, turn, audio, release)
        if output is None:
            return
        prompt = add_tokens(context, turn.input_tokens())
        metadata = live_usage_metadata(Usage(input=prompt, output=output))
        ledger.usages.append(metadata)
        await _send(
            ws, ledger, {"serverContent": {"turnComplete": True}, "usageMetadata": metadata}
        )
        context = add_tokens(prompt, output)
        turn = _Turn()


async def _answer(
    request: web.Request,
    ws: web.WebSocketResponse,
    ledger: LiveLedger,
    turn: _Turn,
    audio: bool,
    release: asyncio.Event,
) -> Tokens | None:
    """Send one model turn's content; its output tokens (None when the connection dropped)."""
    if "[goaway]" in turn.text:
        await _send(ws, ledger, {"goAway": {"timeLeft": "10s"}})
    if audio:
        half = OUTPUT_AUDIO_BYTES // 2
        chunk = base64.b64encode(bytes(half)).decode()
        parts: list[Json] = [{"inlineData": {"mimeType": OUTPUT_AUDIO_MIME, "data": chunk}}] * 2
        output = {"audio": OUTPUT_AUDIO_BYTES // OUTPUT_AUDIO_BYTES_PER_TOKEN}
    else:
        said = turn.text.strip() or "(audio)"
        answer = f"You said: {said}"
        middle = len(answer) // 2
        parts = [{"text": answer[:middle]}, {"text": answer[middle:]}]
        output = {"text": text_tokens(len(answer))}
    for i, part in enumerate(parts):
        await _send(
            ws, ledger, {"serverContent": {"modelTurn": {"role": "model", "parts": [part]}}}
        )
        if i == 0 and "[drop]" in turn.text:
            drop_connection(request)
            return None
        if i == 0 and "[hold]" in turn.text:
            await release.wait()
    await _send(ws, ledger, {"serverContent": {"generationComplete": True}})
    return output


async def _send(ws: web.WebSocketResponse, ledger: LiveLedger, message: Json) -> None:
    await ws.send_bytes(json.dumps(message).encode())
    ledger.frames_sent += 1


def _message(msg: aiohttp.WSMessage) -> Json:
    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return {}
    try:
        value = json.loads(msg.data)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _text_of(content: object) -> str:
    """The text parts of a Content (or of a bare parts list / string) joined."""
    if isinstance(content, str):
        return content
    parts = get_field(content, "parts") if isinstance(content, dict) else content
    return "".join(
        p["text"] for p in as_list(parts) if isinstance(p, dict) and isinstance(p.get("text"), str)
    )
