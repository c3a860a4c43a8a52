"""The emulator's OpenAI-compatible endpoint: chat completions, embeddings and images.

A self-contained block of the emulator (``app.create_emulator_app`` registers
it with ``add_openai_routes``); the app's middleware has already checked the
key (``Authorization: Bearer``, as the ``openai`` SDK sends it, or
``x-goog-api-key``) and applied the delay and failure triggers.

Wire shapes: Google's OpenAI-compatibility guide
(https://ai.google.dev/gemini-api/docs/openai, read 2026-11-29: base URL
``/v1beta/openai/``, ``chat.completions`` plain and streamed, ``embeddings``,
``reasoning_effort`` with ``none`` turning thinking off) and OpenAI's API
reference for the objects, as the ``openai`` SDK 3.57.0 parses them:

- ``POST /{v}/openai/chat/completions`` answers a ``chat.completion``
  (``id``, ``object``, ``created``, ``model``, ``choices[{index, message,
  finish_reason}]``, ``usage``); with ``stream: true``, SSE events
  ``data: {chat.completion.chunk}`` (the first delta has the role, the last
  the ``finish_reason``) ending ``data: [DONE]``. With
  ``stream_options.include_usage`` a last chunk with ``choices: []`` carries
  the usage (OpenAI's reference); without it no chunk does.
- ``POST /{v}/openai/embeddings`` answers ``{"object": "list", "data":
  [{"object": "embedding", "index", "embedding"}], "model", "usage":
  {"prompt_tokens", "total_tokens"}}``; ``encoding_format: base64`` (the SDK's
  default) gives each vector as base64 of little-endian float32s.
- ``POST /{v}/openai/images/generations`` (the guide's "Generate an image", in
  a copy of its Thai edition last updated 2026-09-12: ``model``, ``prompt``,
  ``n``, ``size``, ``response_format``, anything else silently ignored, ``stream``
  included)
  answers ``{"created", "data": [{"b64_json"}]}`` (the ``openai`` SDK 3.57.0's
  ``ImagesResponse``). An Imagen model returns ``n`` images (1 to 4, default 1,
  OpenAI's default); a Gemini image model one, whatever ``n`` asks, as a relay
  built on Google's layer reports (xhighhongo41/nicheLLMProxy, v1.3.1, 2026-09-12:
  "Gemini returns a single image per request"), and its answer carries OpenAI's
  image ``usage`` (``input_tokens`` with ``input_tokens_details``,
  ``output_tokens`` with ``output_tokens_details``, ``total_tokens``): the prompt
  at ``ceil(characters / 4)`` and 1,290 image tokens per image (Google's pricing
  page: "Output images up to 1024x1024px consume 1290 tokens"), but only when
  ``x-emulator-usage: present`` asks for it: no source shows Google's answer with a
  ``usage``, so by default it has none, as Google's guide shows it (``malformed``
  sends a broken one). Images are base64 data whatever ``response_format``
  asks (the relay above: data "always comes back as base64"); ``x-emulator-filtered:
  N`` leaves N of them out, as a safety filter does.
- A request the endpoint refuses is 400 with the error wrapped in a one-element
  list, ``[{"error": {...}}]``, as Google's compat endpoint answers
  (NousResearch/hermes-agent issue 16478, 2026-04-27, quotes such a body).

Usage, deterministic like the rest of the emulator: text is
``ceil(characters / 4)`` over every message's text, an ``image_url`` part 258
tokens, an ``input_audio`` part 160; every message before the last is reported
cached (``prompt_tokens_details.cached_tokens``), as the generateContent
emulator reports its history. The reply and its thought tokens come from
``replies`` (``reasoning_effort`` is the thinking level; ``none`` is none).
By default the counts follow what Google's endpoint was seen sending
(discuss.ai.google.dev thread 127400, February 2026): ``completion_tokens`` is
the answer alone and the thoughts show only in ``total_tokens``. Triggers:

- ``x-emulator-openai-usage: openai``: OpenAI's convention instead,
  ``completion_tokens`` includes the reasoning, which
  ``completion_tokens_details.reasoning_tokens`` reports;
- ``x-emulator-openai-usage: every-chunk``: a stream carries the running usage
  on every chunk, asked for or not, and no usage-only chunk, as Google's
  endpoint was seen doing (same thread; thread 92785 reports usage without
  ``include_usage``);
- ``x-emulator-usage: missing | malformed`` (and ``present`` on the image route, whose
  answer has no ``usage`` by default), ``x-emulator-cut-after``,
  ``x-emulator-chunk-delay-ms`` as everywhere.

The ledger (``app[openai_ledger_key]``) keeps what each answer billed, in the
emulator's own counts, whatever the wire carried.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from .embeddings import _vector
from .media import PNG, filtered_count
from .replies import plan_reply, split_text, thinking_tokens
from .triggers import chunk_delay, cut_after, requested_usage_mode
from .usage import AUDIO_TOKENS, IMAGE_TOKENS, UsageMode, text_tokens
from .wire import DEFAULT_TIER, ApiError, Json, drop_connection, new_id, start_stream

__all__ = ["OpenAIServed", "add_openai_routes", "openai_ledger_key"]

_OPENAI_USAGE: Final = "x-emulator-openai-usage"
_USAGE_STYLES: Final = ("openai", "every-chunk")
_DIMENSIONS: Final = 8
_MAX_DIMENSIONS: Final = 3072
# Images: OpenAI's default n, Imagen's largest sampleCount, and a Gemini image's output
# tokens up to 1024x1024 (Google's pricing page).
_DEFAULT_IMAGES: Final = 1
_MAX_IMAGES: Final = 4
IMAGE_OUTPUT_TOKENS: Final = 1290


@dataclass(frozen=True, slots=True)
class OpenAIServed:
    """One answer of the OpenAI-compatible endpoint, as the emulator billed it."""

    route: str  # "chat", "embeddings" or "images"
    id: str
    model: str
    stream: bool
    include_usage: bool  # the request asked for usage in the stream
    prompt_tokens: int
    cached_tokens: int = 0
    completion_tokens: int = 0  # the answer alone
    reasoning_tokens: int = 0
    # images: returned, left out by the filter, and their output tokens (a Gemini image
    # model's, which bills by the token; an Imagen model bills the images, no tokens)
    images: int = 0
    filtered: int = 0
    image_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.prompt_tokens + self.completion_tokens + self.reasoning_tokens + self.image_tokens
        )


openai_ledger_key: web.AppKey[list[OpenAIServed]] = web.AppKey("openai_ledger", list)


class _Invalid(Exception):
    """A request Google's compat endpoint refuses with 400 INVALID_ARGUMENT."""


def add_openai_routes(app: web.Application, version: str) -> None:
    """Register both routes and the ledger; ``version`` is the app's path pattern."""
    app[openai_ledger_key] = []
    app.router.add_post(f"/{version}/openai/chat/completions", chat_completions)
    app.router.add_post(f"/{version}/openai/embeddings", embeddings)
    app.router.add_post(f"/{version}/openai/images/generations", images)


def _error(message: str) -> web.Response:
    body = [{"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}]
    return web.json_response(body, status=400)


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise _Invalid("Invalid JSON payload received: expected an object.")
    return body


def _model(body: dict[str, object]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.removeprefix("models/"):
        raise _Invalid("model is required.")
    return model.removeprefix("models/")


def _usage_style(request: web.Request) -> str | None:
    style = request.headers.get(_OPENAI_USAGE)
    if style is not None and style not in _USAGE_STYLES:
        raise _Invalid(f"{_OPENAI_USAGE} must be one of {', '.join(_USAGE_STYLES)}.")
    return style


# --- chat completions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prompt:
    tokens: int
    cached: int
    text: str  # the last message's text, what the reply answers


def _message_tokens(content: object, texts: list[str]) -> int:
    """A message's ``content`` (a string or a list of parts) in tokens."""
    if isinstance(content, str):
        texts.append(content)
        return text_tokens(len(content))
    if content is None:
        return 0
    if not isinstance(content, list):
        raise _Invalid("messages[].content must be a string or a list of parts.")
    chars = media = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            chars += len(part["text"])
        elif kind == "image_url":
            media += IMAGE_TOKENS
        elif kind == "input_audio":
            media += AUDIO_TOKENS
        else:
            raise _Invalid(f"Unsupported content part type: {kind!r}.")
    return text_tokens(chars) + media


def _prompt(messages: object) -> _Prompt:
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages must be a non-empty list.")
    counts: list[int] = []
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Invalid("Each message needs a role.")
        texts = []
        counts.append(_message_tokens(message.get("content"), texts))
    return _Prompt(tokens=sum(counts), cached=sum(counts[:-1]), text=" ".join(texts))


def _thoughts(model: str, effort: object) -> int:
    if effort == "none":
        return thinking_tokens(model, None, budget=0)
    return thinking_tokens(model, effort)


def _cap(body: dict[str, object]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _Invalid("max_tokens must be a positive integer.")
    return value


def _usage(served: OpenAIServed, style: str | None, mode: UsageMode, answer: int) -> Json | None:
    """The ``usage`` object for ``answer`` tokens of the reply so far."""
    if mode == "missing":
        return None
    if mode == "malformed":
        return {"prompt_tokens": "many", "completion_tokens": -7, "total_tokens": "NaN"}
    reasoning = served.reasoning_tokens
    usage: Json = {
        "prompt_tokens": served.prompt_tokens,
        "completion_tokens": answer + reasoning if style == "openai" else answer,
        "total_tokens": served.prompt_tokens + answer + reasoning,
    }
    if served.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": served.cached_tokens}
    if style == "openai":
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await _body(request)
        model = _model(body)
        prompt = _prompt(body.get("messages"))
        cap = _cap(body)
        style = _usage_style(request)
    except _Invalid as exc:
        return _error(str(exc))
    reply = plan_reply(
        model=model,
        prompt=prompt.text,
        media={},
        thought_tokens=_thoughts(model, body.get("reasoning_effort")),
        summaries=False,
        code_execution=False,
        google_search=False,
    )
    answer, finish = reply.answer, "stop"
    if cap is not None and text_tokens(len(answer)) > cap:
        answer, finish = answer[: cap * 4], "length"
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    served = OpenAIServed(
        route="chat",
        id=new_id("chatcmpl-"),
        model=model,
        stream=stream,
        include_usage=include_usage,
        prompt_tokens=prompt.tokens,
        cached_tokens=prompt.cached,
        completion_tokens=text_tokens(len(answer)),
        reasoning_tokens=reply.thought_tokens,
    )
    request.app[openai_ledger_key].append(served)
    mode = requested_usage_mode(request)
    created = int(time.time())
    if not stream:
        completion: Json = {
            "id": served.id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": finish,
                }
            ],
        }
        usage = _usage(served, style, mode, served.completion_tokens)
        if usage is not None:
            completion["usage"] = usage
        return web.json_response(completion)
    chunks = _chunks(served, created, answer, finish, style, mode)
    return await _stream(request, chunks)


def _chunks(
    served: OpenAIServed,
    created: int,
    answer: str,
    finish: str,
    style: str | None,
    mode: UsageMode,
) -> Iterator[Json]:
    """The ``chat.completion.chunk`` objects of a streamed reply, in order."""

    def chunk(choices: list[Json], so_far: int) -> Json:
        body: Json = {
            "id": served.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": served.model,
            "choices": choices,
        }
        if style == "every-chunk":
            usage = _usage(served, style, mode, so_far)
            if usage is not None:
                body["usage"] = usage
        return body

    written = ""
    for number, piece in enumerate(split_text(answer)):
        written += piece
        delta: Json = {"role": "assistant", "content": piece} if number == 0 else {"content": piece}
        choice: Json = {"index": 0, "delta": delta, "finish_reason": None}
        yield chunk([choice], text_tokens(len(written)))
    yield chunk([{"index": 0, "delta": {}, "finish_reason": finish}], served.completion_tokens)
    if served.include_usage and style != "every-chunk":
        usage = _usage(served, style, mode, served.completion_tokens)
        if usage is not None:
            yield {
                "id": served.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": served.model,
                "choices": [],
                "usage": usage,
            }


async def _stream(request: web.Request, chunks: Iterator[Json]) -> web.StreamResponse:
    delay = chunk_delay(request)
    budget = cut_after(request)
    response = await start_stream(request, "text/event-stream", DEFAULT_TIER)
    try:
        for number, chunk in enumerate(chunks):
            if budget is not None and number >= budget:
                drop_connection(request)
                return response
            if number:
                await asyncio.sleep(delay)
            data = json.dumps(chunk, separators=(",", ":")).encode()
            await response.write(b"data: " + data + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


# --- embeddings ---------------------------------------------------------------------------


def _inputs(value: object) -> list[object]:
    """``input`` as a list of items: a string, a token array, or a list of either."""
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(type(t) is int for t in value)
    ):
        return [value]
    if isinstance(value, list) and value:
        for item in value:
            if not isinstance(item, str) and not (
                isinstance(item, list) and all(type(t) is int for t in item)
            ):
                raise _Invalid("input items must be strings or token arrays.")
        return list(value)
    raise _Invalid("input must be a non-empty string, list of strings or token array.")


def _item_tokens(item: object) -> int:
    if isinstance(item, str):
        return math.ceil(len(item) / 4)
    return len(item) if isinstance(item, list) else 0


async def embeddings(request: web.Request) -> web.StreamResponse:
    try:
        body = await _body(request)
        model = _model(body)
        items = _inputs(body.get("input"))
        dimensions = body.get("dimensions", _DIMENSIONS)
        if type(dimensions) is not int or not 1 <= dimensions <= _MAX_DIMENSIONS:
            raise _Invalid(f"dimensions must be an integer from 1 to {_MAX_DIMENSIONS}.")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _Invalid("encoding_format must be 'float' or 'base64'.")
    except _Invalid as exc:
        return _error(str(exc))
    tokens = sum(_item_tokens(item) for item in items)
    served = OpenAIServed(
        route="embeddings",
        id=new_id("emb-"),
        model=model,
        stream=False,
        include_usage=False,
        prompt_tokens=tokens,
    )
    request.app[openai_ledger_key].append(served)
    data: list[Json] = []
    for index, item in enumerate(items):
        vector = _vector(item, dimensions)
        embedding: object = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if encoding == "base64"
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer: Json = {"object": "list", "data": data, "model": model}
    mode = requested_usage_mode(request)
    if mode == "malformed":
        answer["usage"] = {"prompt_tokens": str(tokens), "total_tokens": str(tokens)}
    elif mode != "missing":
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response(answer)


# --- images -------------------------------------------------------------------------------


def _image_count(body: dict[str, object]) -> int:
    n = body.get("n", _DEFAULT_IMAGES)
    if type(n) is not int or not 1 <= n <= _MAX_IMAGES:
        raise _Invalid(f"n must be an integer from 1 to {_MAX_IMAGES}.")
    return n


def _image_usage(served: OpenAIServed, mode: UsageMode) -> Json | None:
    """OpenAI's image ``usage`` for a Gemini image model's answer (None: left out)."""
    if mode == "missing":
        return None
    if mode == "malformed":
        return {"input_tokens": "few", "output_tokens": -IMAGE_OUTPUT_TOKENS, "total_tokens": None}
    return {
        "input_tokens": served.prompt_tokens,
        "input_tokens_details": {"text_tokens": served.prompt_tokens, "image_tokens": 0},
        "output_tokens": served.image_tokens,
        "output_tokens_details": {"image_tokens": served.image_tokens, "text_tokens": 0},
        "total_tokens": served.total_tokens,
    }


async def images(request: web.Request) -> web.StreamResponse:
    try:
        body = await _body(request)
        model = _model(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _Invalid("prompt is required.")
        requested = _image_count(body)
        # Google's layer ignores ``stream``; its Gemini image models make one image.
        gemini = model.startswith("gemini-")
        made = 1 if gemini else requested
        filtered = filtered_count(request, made)
        # Google documents no ``usage`` here: left out unless the test asks for one.
        mode = requested_usage_mode(request) or "missing"
    except _Invalid as exc:
        return _error(str(exc))
    except ApiError as exc:
        return _error(exc.message)
    returned = made - filtered
    served = OpenAIServed(
        route="images",
        id=new_id("img-"),
        model=model,
        stream=False,
        include_usage=False,
        prompt_tokens=text_tokens(len(prompt)) if gemini else 0,
        images=returned,
        filtered=filtered,
        image_tokens=IMAGE_OUTPUT_TOKENS * returned if gemini else 0,
    )
    request.app[openai_ledger_key].append(served)
    answer: Json = {"created": int(time.time()), "data": [{"b64_json": PNG}] * returned}
    if gemini:
        usage = _image_usage(served, mode)
        if usage is not None:
            answer["usage"] = usage
    return web.json_response(answer)
