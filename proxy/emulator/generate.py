"""generateContent, streamGenerateContent and countTokens.

- ``POST /{v}/models/{model}:generateContent``, ``:streamGenerateContent``
  (``?alt=sse``: ``data: {chunk}\\r\\n\\r\\n`` events; without it one JSON array
  written element by element), ``:countTokens`` (``{"totalTokens": N}``).
  ``contents`` is required. Fields are read in camelCase or snake_case, as
  Google's parser accepts both (the SDK sends ``thinkingConfig`` fields in
  snake_case).
- Every content before the last one (the chat history) is reported as cached
  (``cachedContentTokenCount``, ``cacheTokensDetails``), and so is the cache a
  request names in ``cachedContent`` (``caches``): its tokens count in the prompt
  too, as Google counts them (``promptTokenCount`` includes the cached part).
- Code execution (``{"codeExecution": {}}``): tool-use tokens = input + code
  + result tokens; output tokens = code + result + answer tokens.
- ``googleSearch`` adds ``groundingMetadata`` with the search query and a ``web``
  source; ``googleMaps`` adds a ``maps`` source, its grounding support and the query
  the Maps tool ran (``webSearchQueries``), and ``googleMapsWidgetContextToken`` when
  ``enableWidget`` is true: the shape of Google's example response on the Maps
  grounding page (ai.google.dev/gemini-api/docs/maps-grounding, "Understanding the
  grounding response", read 2026-11-29; kept as
  ``tests/fixtures/recorded/generate_maps_grounding_docs_example.json``).
- A streamed reply's chunks each carry the cumulative ``usageMetadata``; the
  whole response is the chunks merged, with the same final usage.
- Continuations (``x-emulator-continuations``): a hop but the last ends with
  ``finishReason: CONTINUATION`` and a ``continuationToken`` (proto bytes,
  base64) on its candidate; the same request sent again with that
  ``continuationToken`` gets the next hop, which re-prefills the context so
  far (reported as input, the previous hop's input as cached) and bills its
  own output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from aiohttp import web

from .caches import cached_tokens
from .replies import Reply, _excerpt, answer_pieces, plan_reply, split_text, thinking_tokens
from .state import EmulatorState, emulator_state_key
from .triggers import chunk_delay, cut_after, requested_continuations, requested_usage_mode
from .usage import (
    Tally,
    Tokens,
    Usage,
    UsageMode,
    add_tokens,
    modality_of_mime,
    put_usage_metadata,
    sum_tokens,
    text_tokens,
)
from .wire import (
    DEFAULT_TIER,
    SERVICE_TIERS,
    ApiError,
    Json,
    as_list,
    drop_connection,
    get_field,
    json_body,
    json_response,
    start_stream,
)


@dataclass
class _ContentsInput:
    """generateContent ``contents`` as counted."""

    tally: Tally = field(default_factory=Tally)
    history: Tally = field(default_factory=Tally)  # every content before the last
    prompt: str = ""  # text of the last user content


def read_part(part: object, tally: Tally, texts: list[str]) -> None:
    """Count one part of a content into ``tally``, and collect its text in ``texts``."""
    text = get_field(part, "text")
    if isinstance(text, str):
        tally.text(text)
        texts.append(text)
    for blob_key in ("inlineData", "fileData"):
        blob = get_field(part, blob_key)
        if isinstance(blob, dict):
            tally.media[modality_of_mime(get_field(blob, "mimeType"))] += 1
    for key, inner in (("executableCode", "code"), ("codeExecutionResult", "output")):
        tally.text(get_field(get_field(part, key), inner))
    for key in ("functionCall", "functionResponse"):
        value = get_field(part, key)
        if value is not None:
            tally.text(json.dumps(value))


def _read_contents(contents: object, system: object) -> _ContentsInput:
    items = contents if isinstance(contents, list) else [contents] if contents else []
    if not items:
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
    read = _ContentsInput()
    for position, content in enumerate(items):
        if not isinstance(content, dict):
            raise ApiError(400, "Invalid contents: expected Content objects.")
        texts: list[str] = []
        for part in as_list(get_field(content, "parts")):
            read_part(part, read.tally, texts)
            if position < len(items) - 1:
                read_part(part, read.history, [])
        if content.get("role", "user") == "user":
            read.prompt = "\n".join(texts)
    if isinstance(system, str):
        read.tally.text(system)
    elif isinstance(system, dict):
        for part in as_list(get_field(system, "parts")):
            read_part(part, read.tally, [])
    return read


def _gc_tier(body: Mapping[str, object]) -> str:
    tier = get_field(body, "serviceTier")
    if tier is None or (isinstance(tier, str) and tier.lower() == "unspecified"):
        return DEFAULT_TIER
    if not isinstance(tier, str) or tier.lower() not in SERVICE_TIERS:
        raise ApiError(400, f"Invalid serviceTier {tier!r}.")
    return tier.lower()


def _has_tool(tools: object, name: str) -> bool:
    return any(get_field(tool, name) is not None for tool in as_list(tools))


@dataclass(frozen=True, slots=True)
class _GcChunk:
    """One streamed chunk: its parts and its share of the usage."""

    parts: tuple[Json, ...]
    usage: Usage


@dataclass(frozen=True, slots=True)
class _MapsGrounding:
    """Grounding with Google Maps: the query the tool ran, whether to send the widget."""

    query: str
    widget: bool


def _maps_grounding(tools: object, prompt: str, model: str) -> _MapsGrounding | None:
    for tool in as_list(tools):
        maps = get_field(tool, "googleMaps")
        if maps is not None:
            widget = get_field(maps, "enableWidget") is True
            return _MapsGrounding(query=_excerpt(prompt) or model, widget=widget)
    return None


@dataclass(frozen=True, slots=True)
class _GcPlan:
    model: str
    tier: str
    chunks: tuple[_GcChunk, ...]
    search_query: str | None
    # Set when the reply stops at the decode limit: the token to continue with.
    continuation_token: str | None = None
    maps: _MapsGrounding | None = None

    @property
    def usage(self) -> Usage:
        total = Usage()
        for chunk in self.chunks:
            total = total + chunk.usage
        return total


@dataclass(frozen=True, slots=True)
class GenerateHop:
    """What a ``continuationToken`` continues: the answer left, the context so far."""

    pieces: tuple[str, ...]
    context: Tokens  # the previous hop's input and output, re-prefilled
    cached: Tokens  # the previous hop's input, reported cached


def _token_bytes(token: object) -> bytes | None:
    """A ``continuationToken`` (proto ``bytes``: base64, either alphabet) as bytes."""
    if not isinstance(token, str):
        return None
    try:
        return base64.urlsafe_b64decode(
            token.replace("+", "-").replace("/", "_") + "=" * (-len(token) % 4)
        )
    except ValueError:
        return None


async def _plan_generate(request: web.Request) -> _GcPlan:
    """Parse a generateContent request and plan its reply as stream chunks.

    The non-streaming response is these chunks merged, so both modes report
    the same final usage for the same request.
    """
    return plan_generate(
        request.app[emulator_state_key],
        await json_body(request),
        request.match_info["model"],
        requested_continuations(request),
    )


def plan_generate(
    state: EmulatorState, body: Mapping[str, object], model: str, hops: int = 0
) -> _GcPlan:
    """Plan the reply to one GenerateContentRequest ``body`` (also a batch's requests)."""
    tier = _gc_tier(body)
    read = _read_contents(body.get("contents"), get_field(body, "systemInstruction"))
    cache = cached_tokens(state, body, model)
    token = get_field(body, "continuationToken")
    if token is not None:
        # A continuation hop: the same contents again, the next piece of the
        # answer; the hop re-prefills the context so far.
        hop = state.generate_continuations.get(_token_bytes(token) or b"")
        if hop is None:
            raise ApiError(400, "Invalid continuationToken.")
        pieces = hop.pieces
        reply = Reply(
            thought_tokens=0,
            thought_summary=None,
            search_query=None,
            code=None,
            code_output=None,
            answer=pieces[0],
        )
        prompt = Usage(input=hop.context, cached=hop.cached)
    else:
        thinking = get_field(get_field(body, "generationConfig"), "thinkingConfig")
        reply = plan_reply(
            model=model,
            prompt=read.prompt,
            media=read.tally.media,
            thought_tokens=thinking_tokens(
                model, get_field(thinking, "thinkingLevel"), get_field(thinking, "thinkingBudget")
            ),
            summaries=get_field(thinking, "includeThoughts") is True,
            code_execution=_has_tool(body.get("tools"), "codeExecution"),
            google_search=_has_tool(body.get("tools"), "googleSearch"),
        )
        pieces = (reply.answer,)
        if hops:
            pieces = answer_pieces(reply.answer, hops + 1)
            reply = replace(reply, answer=pieces[0])
        history = read.history.tokens() if read.history.chars or read.history.media else {}
        prompt = Usage(
            input=add_tokens(read.tally.tokens(), cache),
            cached=add_tokens(history, cache),
            thought=reply.thought_tokens,
        )
    code_tokens, result_tokens, _ = reply.usage_parts
    chunks: list[_GcChunk] = []
    pending = prompt  # the prompt and the thinking are charged to the first chunk
    if reply.thought_summary is not None:
        chunks.append(_GcChunk(({"text": reply.thought_summary, "thought": True},), pending))
        pending = Usage()
    if reply.code is not None and reply.code_output is not None:
        code_part = {"executableCode": {"language": "PYTHON", "code": reply.code}}
        chunks.append(_GcChunk((code_part,), pending + Usage(output=code_tokens)))
        pending = Usage()
        result_part = {
            "codeExecutionResult": {"outcome": "OUTCOME_OK", "output": reply.code_output}
        }
        tool_use = add_tokens(prompt.input, code_tokens, result_tokens)
        chunks.append(_GcChunk((result_part,), Usage(output=result_tokens, tool_use=tool_use)))
    # Text tokens are charged as the running ceil of the text so far, so the
    # chunks add up to exactly the whole answer's tokens.
    sent = 0
    for piece in split_text(reply.answer):
        share = text_tokens(sent + len(piece)) - text_tokens(sent)
        sent += len(piece)
        chunks.append(_GcChunk(({"text": piece},), pending + Usage(output={"text": share})))
        pending = Usage()
    plan = _GcPlan(model, tier, tuple(chunks), reply.search_query)
    if token is None:
        plan = replace(plan, maps=_maps_grounding(body.get("tools"), read.prompt, model))
    if len(pieces) > 1:
        issued = secrets.token_bytes(18)
        output = plan.usage.output
        state.remember_generate_token(
            issued,
            GenerateHop(pieces[1:], add_tokens(prompt.input, output), dict(prompt.input)),
        )
        plan = replace(plan, continuation_token=base64.b64encode(issued).decode())
    return plan


def _merge_text_parts(parts: Iterable[Json]) -> list[Json]:
    """Adjacent plain text parts joined, the way a whole response carries them."""
    merged: list[Json] = []
    for part in parts:
        if merged and set(part) == {"text"} and set(merged[-1]) == {"text"}:
            merged[-1] = {"text": merged[-1]["text"] + part["text"]}
        else:
            merged.append(dict(part))
    return merged


def _gc_response(
    plan: _GcPlan,
    parts: Sequence[Json],
    usage: Usage,
    mode: UsageMode,
    response_id: str,
    *,
    last: bool,
) -> Json:
    candidate: Json = {"content": {"parts": list(parts), "role": "model"}}
    if last:
        if plan.continuation_token is not None:
            candidate["finishReason"] = "CONTINUATION"
            candidate["continuationToken"] = plan.continuation_token
        else:
            candidate["finishReason"] = "STOP"
        grounding = _grounding_metadata(plan, parts)
        if grounding:
            candidate["groundingMetadata"] = grounding
    candidate["index"] = 0
    body: Json = {"candidates": [candidate]}
    put_usage_metadata(body, usage, mode)
    body["modelVersion"] = plan.model
    body["responseId"] = response_id
    return body


def _grounding_metadata(plan: _GcPlan, parts: Sequence[Json]) -> Json:
    """The candidate's ``groundingMetadata`` for the Search and Maps tools it used."""
    metadata: Json = {}
    chunks: list[Json] = []
    queries: list[str] = []
    if plan.search_query is not None:
        queries.append(plan.search_query)
        chunks.append({"web": {"uri": "https://example.com/search", "title": "example.com"}})
        metadata["searchEntryPoint"] = {
            "renderedContent": f"<div>Results for {plan.search_query}</div>"
        }
    if plan.maps is not None:
        queries.append(plan.maps.query)
        chunks.append(
            {
                "maps": {
                    "uri": "https://maps.google.com/?cid=13100894621228039586",
                    "title": "Emulated Place",
                    "placeId": "places/emulated",
                }
            }
        )
        text = next((p["text"] for p in parts if isinstance(p.get("text"), str)), "")
        metadata["groundingSupports"] = [
            {
                "segment": {"startIndex": 0, "endIndex": len(text), "text": text},
                "groundingChunkIndices": [len(chunks) - 1],
            }
        ]
        if plan.maps.widget:
            metadata["googleMapsWidgetContextToken"] = "widgetcontent/emulated"
    if chunks:
        metadata["groundingChunks"] = chunks
        metadata["webSearchQueries"] = queries
    return metadata


def _stream_bodies(plan: _GcPlan, mode: UsageMode) -> Iterator[Json]:
    """The chunks of a streamed reply, each with the usage so far."""
    response_id = secrets.token_urlsafe(16)
    so_far = Usage()
    for number, chunk in enumerate(plan.chunks, start=1):
        so_far = so_far + chunk.usage
        last = number == len(plan.chunks)
        yield _gc_response(plan, chunk.parts, so_far, mode, response_id, last=last)


def whole_response(plan: _GcPlan, mode: UsageMode = None) -> Json:
    """The non-streamed GenerateContentResponse of a planned reply."""
    parts = _merge_text_parts(part for chunk in plan.chunks for part in chunk.parts)
    return _gc_response(plan, parts, plan.usage, mode, secrets.token_urlsafe(16), last=True)


async def generate_content(request: web.Request) -> web.StreamResponse:
    plan = await _plan_generate(request)
    return json_response(whole_response(plan, requested_usage_mode(request)), plan.tier)


async def stream_generate(request: web.Request) -> web.StreamResponse:
    plan = await _plan_generate(request)
    mode = requested_usage_mode(request)
    delay = chunk_delay(request)
    budget = cut_after(request)
    sse = request.query.get("alt") == "sse"
    response = await start_stream(
        request, "text/event-stream" if sse else "application/json; charset=UTF-8", plan.tier
    )
    try:
        for number, chunk in enumerate(_stream_bodies(plan, mode)):
            if budget is not None and number >= budget:
                drop_connection(request)
                return response
            if number:
                await asyncio.sleep(delay)
            if sse:
                # Google frames these events with CRLF, unlike the Interactions API.
                data = json.dumps(chunk, separators=(",", ":")).encode()
                await response.write(b"data: " + data + b"\r\n\r\n")
            else:
                # One JSON array, pretty-printed and written element by element
                # the way Google sends it, so readers must parse incrementally.
                lead = b"[" if number == 0 else b"\n,\r\n"
                await response.write(lead + json.dumps(chunk, indent=2).encode())
        if not sse:
            await response.write(b"\n]")
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


async def count_tokens(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    inner = get_field(body, "generateContentRequest")
    source = inner if isinstance(inner, dict) else body
    read = _read_contents(source.get("contents"), get_field(source, "systemInstruction"))
    return json_response({"totalTokens": sum_tokens(read.tally.tokens())}, DEFAULT_TIER)
