"""Test triggers: request headers that make the emulator misbehave on purpose.

The proxy relays them unchanged, so a test sets them on its request through
the proxy:

- ``x-emulator-delay-ms: N``: wait N ms before answering (replaces
  ``latency_seconds`` for that request);
- ``x-emulator-fail: STATUS``: answer that HTTP status (400-599) with a
  Gemini error (after the delay, before anything else);
- ``x-emulator-usage: missing | malformed``: leave usage out, or send counts
  that are strings or negative, in whole responses and streams alike (an
  interaction remembers it for later polls); ``present`` is every route's
  default but the OpenAI-compatible image route's, which sends no usage unless
  asked (``emulator.openai``);
- ``x-emulator-chunk-delay-ms: N``: pause N ms between streamed events
  (replaces ``chunk_delay_seconds``);
- ``x-emulator-cut-after: N``: a stream (Interactions events or
  generateContent chunks) stops after N events and the connection is dropped
  without the end of the chunked body: no ``interaction.completed``, no
  ``event: done``, as when a connection is lost;
- ``x-emulator-continuations: N`` (0 to ``MAX_CONTINUATIONS``): the answer
  takes N + 1 hops, as when it hits the per-request decode limit. An
  interaction hop but the last ends ``requires_continuation`` with a
  ``continuation_token``, which a new ``interactions.create`` sends back
  (with ``previous_interaction_id`` = the hop that issued it); a
  generateContent hop ends ``finishReason: CONTINUATION`` with a
  ``continuationToken``, sent back in the same request. Each hop has its own
  usage: it re-prefills the context so far (input, the previous hop's input
  reported as cached) and bills only the output it generates. A background
  interaction ignores it.
- ``x-emulator-batch-outcome: succeeded | failed | expired``: how a batch created with
  it ends (``batches.requested_outcome``).

- ``x-emulator-filtered: N`` (Imagen and Veo creates: N of the images or videos
  asked for are filtered) and ``x-emulator-operation-error: STATUS`` (a Veo
  operation ends failed): see ``media``.

A trigger with a value it cannot use is answered 400 INVALID_ARGUMENT naming
the header, on every endpoint, so a typo in a test fails loudly.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from .state import emulator_state_key
from .usage import UsageMode
from .wire import ApiError, int_or_none

# Bounds the hops one request can ask for.
MAX_CONTINUATIONS: Final = 8


def header_ms(request: web.Request, name: str) -> float | None:
    """A trigger header in milliseconds, as seconds; None when absent."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = int_or_none(raw)
    if value is None or value < 0:
        raise ApiError(400, f"{name} must be a non-negative integer number of milliseconds.")
    return value / 1000


def chunk_delay(request: web.Request) -> float:
    delay = header_ms(request, "x-emulator-chunk-delay-ms")
    return request.app[emulator_state_key].config.chunk_delay_seconds if delay is None else delay


def requested_usage_mode(request: web.Request) -> UsageMode:
    raw = request.headers.get("x-emulator-usage")
    if raw is None:
        return None
    if raw == "present":
        return "present"
    if raw == "missing":
        return "missing"
    if raw == "malformed":
        return "malformed"
    raise ApiError(400, "x-emulator-usage must be 'present', 'missing' or 'malformed'.")


def _count(request: web.Request, name: str, maximum: int) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = int_or_none(raw)
    if value is None or not 0 <= value <= maximum:
        raise ApiError(400, f"{name} must be an integer from 0 to {maximum}.")
    return value


def cut_after(request: web.Request) -> int | None:
    """How many events a stream sends before its connection is dropped; None: all."""
    return _count(request, "x-emulator-cut-after", 1_000_000)


def requested_continuations(request: web.Request) -> int:
    """How many ``requires_continuation`` hops an interaction's answer takes."""
    return _count(request, "x-emulator-continuations", MAX_CONTINUATIONS) or 0
