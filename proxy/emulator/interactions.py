"""A local stand-in for the Gemini API: the upstream of the proxy's tests, demo and benchmarks.

The emulator is an aiohttp application (``create_emulator_app``) that answers
the endpoints the proxy meters with the wire format google-genai 3.3.0 parses,
and with usage figures that are a pure function of the request, so a test can
assert exact token counts and a benchmark measures the proxy, not a model.
It keeps nothing but memory: interactions by id (the newest
``MAX_STORED_INTERACTIONS``) and the last ``MAX_SEEN_REQUESTS`` requests, which
tests read from ``app[emulator_state_key]`` to check what the proxy relayed.

Endpoints (any version prefix: ``v1``, ``v1beta``, ``v1alpha``, ...). Every
request needs a non-empty key (``x-goog-api-key`` or ``?key=``), else
401 UNAUTHENTICATED; every error is Gemini's ``{"error": {code, message,
status}}``; every response carries ``x-gemini-service-tier``, the effective
tier (the requested one, ``standard`` by default).

- ``POST /{v}/interactions``: the Interaction resource; ``stream: true`` gives
  SSE events, ``background: true`` returns ``in_progress`` at once and
  completes after ``EmulatorConfig.background_seconds``; ``store: false``
  keeps nothing (and is refused with ``background``). An unknown
  ``previous_interaction_id`` is 404 NOT_FOUND. ``input`` may be a string, a
  content block, a list of them, or a list of steps (stateless history).
- ``GET /{v}/interactions/{id}``: the resource now; ``?stream=true`` replays
  its events (following a running background interaction until it ends),
  ``&last_event_id=X`` resumes after event X; ``?include_input=true`` echoes
  the request's input.
- ``POST /{v}/interactions/{id}/cancel``: a running background interaction
  becomes ``cancelled`` (anything else is 400 FAILED_PRECONDITION).
- ``DELETE /{v}/interactions/{id}``: forgets it; answers ``{}``.
- ``POST /{v}/models/{model}:generateContent``, ``:streamGenerateContent``
  (``?alt=sse``: ``data: {chunk}\\r\\n\\r\\n`` events; without it one JSON array
  written element by element), ``:countTokens`` (``{"totalTokens": N}``).
  ``contents`` is required. Fields are read in camelCase or snake_case, as
  Google's parser accepts both (the SDK sends ``thinkingConfig`` fields in
  snake_case).
- ``POST /upload/{v}/files``: the body is streamed in and counted. A plain
  upload answers ``{"file": {...}}`` at once; the SDK's resumable protocol
  (``x-goog-upload-command: start`` then ``upload, finalize`` to the returned
  ``x-goog-upload-url``) works too, the upload URL acting as the credential
  the way Google's does.

Interactions streams send, each as ``data: <json>\\n\\n`` with an ``event_id``:
``interaction.created``, ``interaction.status_update`` (in_progress), then for
every generated step ``step.start`` / ``step.delta``... / ``step.stop`` (whose
``usage`` is cumulative so far and ``step_usage`` the step's own share), then
``interaction.status_update`` (completed, final usage) and
``interaction.completed`` (the whole interaction, final usage), and
``data: [DONE]``. Usage therefore appears several times: only the last figure
is the request's. A response's ``steps`` start with the ``user_input`` step
echoing this turn's input, so stream ``index`` values start at 1.

Deterministic usage (same request, same numbers):

- Text is ``ceil(characters / 4)`` tokens, counted over all the text of the
  input (system instruction included). A media block is a fixed count:
  image 258 (``IMAGE_TOKENS``), audio 160, video 1290, document 516, reported
  under its modality.
- Interactions with ``previous_interaction_id``: the previous interaction's
  input and output tokens join this turn's input, and its input (its whole
  prompt) is reported as cached (``total_cached_tokens`` and
  ``cached_tokens_by_modality``). generateContent: every content before the
  last one (the chat history) is reported as cached
  (``cachedContentTokenCount``, ``cacheTokensDetails``).
- Code execution (``{"type": "code_execution"}`` / ``{"codeExecution": {}}``)
  runs once: a ``code_execution_call`` (python) and an ``OUTCOME_OK``
  ``code_execution_result``; tool-use tokens = input + code + result tokens;
  output tokens = code + result + answer tokens. A prompt asking for the sum
  of the first N primes gets code that computes it (N = 50 gives 5117) and an
  answer that states it; other prompts get code that counts their words.
- Thinking: models named ``gemini-2.5*`` or ``gemini-3*``, or a request that
  sets a thinking level (or a positive ``thinkingBudget``), think;
  ``thinkingBudget: 0`` turns it off. Thought tokens depend only on the level:
  minimal 16, low 64, medium 128 (the default), high 256, xhigh 512; a
  positive budget caps the default.
- ``google_search`` (Interactions) adds a search call and result and
  ``grounding_tool_count`` ``[{"type": "google_search", "count": 1}]``; in
  generateContent (``googleSearch``) it adds ``groundingMetadata``.
- total = input + tool use + output + thought. A cancelled interaction bills
  its input only. Ids and timestamps differ between calls; numbers and text
  do not.

Test triggers, read from request headers (the proxy relays them unchanged):

- ``x-emulator-delay-ms: N``: wait N ms before answering (replaces
  ``latency_seconds`` for that request);
- ``x-emulator-fail: STATUS``: answer that HTTP status (400-599) with a
  Gemini error (after the delay, before anything else);
- ``x-emulator-usage: missing | malformed``: leave usage out, or send counts
  that are strings or negative, in whole responses and streams alike (an
  interaction remembers it for later polls);
- ``x-emulator-chunk-delay-ms: N``: pause N ms between streamed events
  (replaces ``chunk_delay_seconds``).

A trigger with a value it cannot use is answered 400 INVALID_ARGUMENT naming
the header, on every endpoint, so a typo in a test fails loudly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "MAX_SEEN_REQUESTS",
    "MAX_STORED_INTERACTIONS",
    "EmulatedInteraction",
    "EmulatorConfig",
    "EmulatorState",
    "SeenRequest",
    "create_emulator_app",
    "emulator_state_key",
    "run_emulator",
]

logger = logging.getLogger(__name__)

MAX_SEEN_REQUESTS: Final = 10_000
MAX_STORED_INTERACTIONS: Final = 10_000
# Abandoned resumable uploads are forgotten past this many open sessions.
_MAX_UPLOAD_SESSIONS: Final = 1_000

IMAGE_TOKENS: Final = 258
AUDIO_TOKENS: Final = 160
VIDEO_TOKENS: Final = 1290
DOCUMENT_TOKENS: Final = 516
_MEDIA_TOKENS: Final[Mapping[str, int]] = {
    "image": IMAGE_TOKENS,
    "audio": AUDIO_TOKENS,
    "video": VIDEO_TOKENS,
    "document": DOCUMENT_TOKENS,
}
# Report order of modalities, and the only names either API uses.
_MODALITIES: Final = ("text", "image", "audio", "video", "document")

THOUGHT_TOKENS: Final[Mapping[str, int]] = {
    "minimal": 16,
    "low": 64,
    "medium": 128,
    "high": 256,
    "xhigh": 512,
}
_DEFAULT_THINKING_LEVEL: Final = "medium"
_THINKING_MODEL = re.compile(r"^(?:models/)?gemini-(?:2\.5|3)")

_INTERACTION_TIERS: Final = frozenset({"flex", "standard", "priority", "deferred"})
_DEFAULT_TIER: Final = "standard"
_TIER_HEADER: Final = "x-gemini-service-tier"

# Google's canonical status names for the HTTP codes an API answers with.
_STATUS_NAMES: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_PRIMES_PROMPT = re.compile(r"first\s+(\d+)\s+prime", re.IGNORECASE)
# Bounds the work a prompt can ask of the emulator's own prime computation.
_MAX_PRIMES: Final = 10_000
_EXCERPT_CHARS: Final = 80

Json = dict[str, Any]
Tokens = dict[str, int]  # lower-case modality -> tokens
UsageMode = Literal["missing", "malformed"] | None


# --------------------------------------------------------------------------- public surface


@dataclass(frozen=True)
class EmulatorConfig:
    """Pacing of the emulator's answers."""

    latency_seconds: float = 0.0  # delay before the response starts
    chunk_delay_seconds: float = 0.0  # pause between streamed events/chunks
    background_seconds: float = 0.2  # how long a background interaction stays in_progress


@dataclass(frozen=True)
class SeenRequest:
    """One request as the emulator received it, before anything else happened."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    api_key: str | None  # from x-goog-api-key, else ?key=


class EmulatedInteraction:
    """One interaction the emulator created: its request, its planned result, its state.

    Everything it will say is planned at creation (the emulator is
    deterministic), so a background interaction only has to wait for its
    ``ready_at`` moment; the status is derived from the clock on every read.
    """

    def __init__(
        self,
        *,
        interaction_id: str,
        model: str | None,
        agent: str | None,
        service_tier: str,
        labels: dict[str, str],
        previous_interaction_id: str | None,
        request_input: object,
        user_step: Json | None,
        steps: list[_PlannedStep],
        usage: _Usage,
        background: bool,
        usage_mode: UsageMode,
        ready_at: float,
    ) -> None:
        self.id = interaction_id
        self.model = model
        self.agent = agent
        self.service_tier = service_tier
        self.labels = labels
        self.previous_interaction_id = previous_interaction_id
        self.background = background
        self.usage_mode: UsageMode = usage_mode
        self._input = request_input
        self._user_step = user_step
        self._steps = steps
        self._usage = usage
        self._created_monotonic = time.monotonic()
        self._created_wall = datetime.now(UTC)
        self.ready_at = ready_at
        self.cancelled_at: float | None = None
        self.deleted = False
        # Set whenever the state changes by a request (cancel, delete), so
        # streams following a running interaction wake up at once.
        self.changed = asyncio.Event()

    @property
    def context_usage(self) -> _Usage:
        """What this interaction adds to a follow-up turn's context."""
        if self.cancelled_at is not None:
            return _Usage(input=dict(self._usage.input))
        return _Usage(input=_add(self._usage.input, self._usage.output))

    @property
    def cached_for_next_turn(self) -> Tokens:
        """The part of a follow-up turn's context reported as cached: this prompt."""
        return dict(self._usage.input)

    def status(self, now: float | None = None) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if (time.monotonic() if now is None else now) >= self.ready_at:
            return "completed"
        return "in_progress"

    def cancel(self) -> None:
        self.cancelled_at = time.monotonic()
        self.changed.set()

    def forget(self) -> None:
        self.deleted = True
        self.changed.set()

    def final_usage(self, status: str) -> _Usage | None:
        if status == "completed":
            return self._usage
        if status == "cancelled":
            return _Usage(input=dict(self._usage.input), cached=dict(self._usage.cached))
        return None

    def resource(
        self, *, usage_mode: UsageMode, include_input: bool = False, now: float | None = None
    ) -> Json:
        """The Interaction resource as ``GET /interactions/{id}`` answers it."""
        status = self.status(now)
        body = self._head(status)
        if self.previous_interaction_id is not None:
            body["previous_interaction_id"] = self.previous_interaction_id
        if self.labels:
            body["labels"] = self.labels
        if include_input and self._input is not None:
            body["input"] = self._input
        body["steps"] = self._resource_steps(status)
        usage = self.final_usage(status)
        if usage is not None:
            _put_interaction_usage(body, usage, usage_mode)
        return body

    def events(self, *, usage_mode: UsageMode, now: float | None = None) -> list[Json]:
        """The SSE events of this interaction as far as its state allows.

        Events before a state change keep their ids as the state moves on, so
        a client can resume with ``last_event_id`` across the change.
        """
        status = self.status(now)
        head = self._head("in_progress") | {"object": "interaction"}
        events: list[Json] = [
            {"event_type": "interaction.created", "interaction": head},
            {
                "event_type": "interaction.status_update",
                "interaction_id": self.id,
                "status": "in_progress",
            },
        ]
        if status == "completed":
            offset = 0 if self._user_step is None else 1
            so_far = _Usage()
            for index, planned in enumerate(self._steps, start=offset):
                so_far = so_far + planned.usage
                events.append({"event_type": "step.start", "index": index, "step": planned.start})
                events.extend(
                    {"event_type": "step.delta", "index": index, "delta": delta}
                    for delta in planned.deltas
                )
                stop: Json = {"event_type": "step.stop", "index": index}
                _put_interaction_usage(stop, so_far, usage_mode)
                _put_interaction_usage(stop, planned.usage, usage_mode, key="step_usage")
                events.append(stop)
        if status in ("completed", "cancelled"):
            update: Json = {
                "event_type": "interaction.status_update",
                "interaction_id": self.id,
                "status": status,
            }
            final = self.final_usage(status)
            assert final is not None
            _put_interaction_usage(update, final, usage_mode)
            events.append(update)
            interaction = self._head(status) | {"object": "interaction"}
            interaction["steps"] = self._resource_steps(status)
            _put_interaction_usage(interaction, final, usage_mode)
            events.append({"event_type": "interaction.completed", "interaction": interaction})
        for number, event in enumerate(events, start=1):
            event["event_id"] = f"evt_{number}"
        return events

    def _head(self, status: str) -> Json:
        head: Json = {"id": self.id, "status": status}
        if self.model is not None:
            head["model"] = self.model
        if self.agent is not None:
            head["agent"] = self.agent
        head["created"] = _timestamp(self._created_wall)
        head["updated"] = _timestamp(self._updated_wall(status))
        head["service_tier"] = self.service_tier
        return head

    def _updated_wall(self, status: str) -> datetime:
        if status == "in_progress":
            return self._created_wall
        ended = self.cancelled_at if self.cancelled_at is not None else self.ready_at
        return self._created_wall + timedelta(seconds=max(0.0, ended - self._created_monotonic))

    def _resource_steps(self, status: str) -> list[Json]:
        steps = [] if self._user_step is None else [self._user_step]
        if status == "completed":
            steps.extend(planned.step for planned in self._steps)
        return steps


class EmulatorState:
    """Everything the emulator remembers; tests read it through ``emulator_state_key``.

    ``interactions`` keeps the newest ``MAX_STORED_INTERACTIONS`` by id and
    ``requests`` the last ``MAX_SEEN_REQUESTS`` requests, oldest first, so a
    long benchmark runs in bounded memory.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.interactions: OrderedDict[str, EmulatedInteraction] = OrderedDict()
        self.requests: deque[SeenRequest] = deque(maxlen=MAX_SEEN_REQUESTS)
        # Resumable uploads between their start and their finalize, by upload id.
        self.upload_sessions: OrderedDict[str, _UploadSession] = OrderedDict()

    def store(self, interaction: EmulatedInteraction) -> None:
        self.interactions[interaction.id] = interaction
        while len(self.interactions) > MAX_STORED_INTERACTIONS:
            self.interactions.popitem(last=False)

    def lookup(self, interaction_id: str) -> EmulatedInteraction:
        found = self.interactions.get(interaction_id)
        if found is None:
            raise _ApiError(404, f"Interaction {interaction_id!r} was not found.")
        return found


emulator_state_key: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)

_DEFAULT_CONFIG: Final = EmulatorConfig()


def create_emulator_app(config: EmulatorConfig = _DEFAULT_CONFIG) -> web.Application:
    """The emulator as an aiohttp application; its state is ``app[emulator_state_key]``."""
    # JSON bodies carry inline media as base64, so allow more than aiohttp's
    # 1 MiB default; uploads are streamed and not bound by this.
    app = web.Application(middlewares=[_emulate], client_max_size=64 * 1024**2)
    app[emulator_state_key] = EmulatorState(config)
    version = r"{version:v\d+[a-z0-9]*}"
    model = r"{model:[^/:]+}"
    app.router.add_post(f"/{version}/interactions", _create_interaction)
    app.router.add_get(f"/{version}/interactions/{{interaction_id}}", _get_interaction)
    app.router.add_delete(f"/{version}/interactions/{{interaction_id}}", _delete_interaction)
    app.router.add_post(f"/{version}/interactions/{{interaction_id}}/cancel", _cancel_interaction)
    app.router.add_post(f"/{version}/models/{model}:generateContent", _generate_content)
    app.router.add_post(f"/{version}/models/{model}:streamGenerateContent", _stream_generate)
    app.router.add_post(f"/{version}/models/{model}:countTokens", _count_tokens)
    app.router.add_post(f"/upload/{version}/files", _upload_file)
    return app


async def run_emulator(host: str, port: int, config: EmulatorConfig) -> None:
    """Serve the emulator on ``host:port`` until cancelled."""
    # No access log: benchmarks push thousands of requests a second through it.
    runner = web.AppRunner(create_emulator_app(config), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("Gemini emulator listening on %s", ", ".join(map(str, runner.addresses)))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- errors, middleware


class _ApiError(Exception):
    """An answer in Gemini's error shape, raised from anywhere in a handler."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _status_name(code)


def _status_name(code: int) -> str:
    return _STATUS_NAMES.get(code, "UNKNOWN" if code >= 500 else "INVALID_ARGUMENT")


def _error_response(error: _ApiError, tier: str = _DEFAULT_TIER) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "status": error.status}}
    return web.json_response(body, status=error.code, headers={_TIER_HEADER: tier})


def _api_key(request: web.Request) -> str | None:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    return key or None


@web.middleware
async def _emulate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, authenticate, apply the delay and failure triggers, map errors."""
    state = request.app[emulator_state_key]
    api_key = _api_key(request)
    state.requests.append(
        SeenRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={name.lower(): value for name, value in request.headers.items()},
            api_key=api_key,
        )
    )
    try:
        # An upload session URL is its own credential, as with Google: the
        # SDK sends the file bytes there without the API key.
        if api_key is None and request.query.get("upload_id") not in state.upload_sessions:
            raise _ApiError(
                401,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity "
                "to call this API.",
            )
        # Check every trigger up front, so a typo fails loudly on any endpoint.
        delay = _header_ms(request, "x-emulator-delay-ms")
        _chunk_delay(request)
        _usage_mode(request)
        await asyncio.sleep(state.config.latency_seconds if delay is None else delay)
        fail = request.headers.get("x-emulator-fail")
        if fail is not None:
            code = _int_or_none(fail)
            if code is None or not 400 <= code <= 599:
                raise _ApiError(400, "x-emulator-fail must be an HTTP error status (400-599).")
            return _error_response(
                _ApiError(code, f"Failure requested by x-emulator-fail: {code}."),
                await _requested_tier(request),
            )
        return await handler(request)
    except _ApiError as error:
        return _error_response(error)
    except web.HTTPException as exc:
        # Unmatched paths and methods, and aiohttp's own refusals (body too large).
        if exc.status in (404, 405):
            return _error_response(
                _ApiError(404, f"The requested URL {request.path} was not found on this server.")
            )
        if exc.status < 400:
            raise
        return _error_response(_ApiError(exc.status, exc.reason))
    except Exception:
        # A bug here must still look like Gemini to the proxy under test.
        logger.exception("Gemini emulator failed on %s %s", request.method, request.path)
        return _error_response(_ApiError(500, "Internal error in the Gemini emulator."))


async def _requested_tier(request: web.Request) -> str:
    """The tier a request asked for, read only when answering a failure trigger."""
    if request.method != "POST" or request.path.startswith("/upload/"):
        return _DEFAULT_TIER
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        body = json.loads(await request.read() or b"{}")
        if isinstance(body, dict):
            tier = _field(body, "serviceTier")
            if isinstance(tier, str) and tier.lower() in _INTERACTION_TIERS:
                return tier.lower()
    return _DEFAULT_TIER


def _int_or_none(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _header_ms(request: web.Request, name: str) -> float | None:
    """A trigger header in milliseconds, as seconds; None when absent."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = _int_or_none(raw)
    if value is None or value < 0:
        raise _ApiError(400, f"{name} must be a non-negative integer number of milliseconds.")
    return value / 1000


def _chunk_delay(request: web.Request) -> float:
    delay = _header_ms(request, "x-emulator-chunk-delay-ms")
    return request.app[emulator_state_key].config.chunk_delay_seconds if delay is None else delay


def _usage_mode(request: web.Request) -> UsageMode:
    raw = request.headers.get("x-emulator-usage")
    if raw is None:
        return None
    if raw == "missing":
        return "missing"
    if raw == "malformed":
        return "malformed"
    raise _ApiError(400, "x-emulator-usage must be 'missing' or 'malformed'.")


async def _json_body(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "Invalid JSON payload received: expected an object.")
    return body


def _json(body: object, tier: str) -> web.Response:
    return web.json_response(body, headers={_TIER_HEADER: tier})


async def _start_stream(request: web.Request, content_type: str, tier: str) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            _TIER_HEADER: tier,
        }
    )
    await response.prepare(request)
    return response


# --------------------------------------------------------------------------- token arithmetic


def _text_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _add(*parts: Mapping[str, int]) -> Tokens:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return {name: total[name] for name in _MODALITIES if total[name]}


def _sum(tokens: Mapping[str, int]) -> int:
    return sum(tokens.values())


@dataclass(frozen=True, slots=True)
class _Usage:
    """Token counts of one response or one part of it, by billing category."""

    input: Mapping[str, int] = field(default_factory=dict)  # cached included
    cached: Mapping[str, int] = field(default_factory=dict)
    tool_use: Mapping[str, int] = field(default_factory=dict)
    output: Mapping[str, int] = field(default_factory=dict)
    thought: int = 0
    searches: int = 0

    def __add__(self, other: _Usage) -> _Usage:
        return _Usage(
            input=_add(self.input, other.input),
            cached=_add(self.cached, other.cached),
            tool_use=_add(self.tool_use, other.tool_use),
            output=_add(self.output, other.output),
            thought=self.thought + other.thought,
            searches=self.searches + other.searches,
        )

    @property
    def total(self) -> int:
        return _sum(self.input) + _sum(self.tool_use) + _sum(self.output) + self.thought


@dataclass
class _Tally:
    """Input as it is counted: text characters and media blocks by modality."""

    chars: int = 0
    media: Counter[str] = field(default_factory=Counter)

    def text(self, value: object) -> None:
        if isinstance(value, str):
            self.chars += len(value)

    def tokens(self) -> Tokens:
        return _add(
            {"text": _text_tokens(self.chars)},
            {name: count * _MEDIA_TOKENS[name] for name, count in self.media.items()},
        )


def _modality_of_mime(mime_type: object) -> str:
    mime = mime_type.lower() if isinstance(mime_type, str) else ""
    for prefix in ("image", "audio", "video"):
        if mime.startswith(prefix + "/"):
            return prefix
    return "document"


# --------------------------------------------------------------------------- what the "model" says


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the emulated model produces for one prompt, before any wire format."""

    thought_tokens: int
    thought_summary: str | None
    search_query: str | None
    code: str | None
    code_output: str | None
    answer: str

    @property
    def usage_parts(self) -> tuple[Tokens, Tokens, Tokens]:
        """Output tokens of the code, of its result, and of the answer."""
        code = {"text": _text_tokens(len(self.code))} if self.code is not None else {}
        result = (
            {"text": _text_tokens(len(self.code_output or ""))} if self.code is not None else {}
        )
        return code, result, {"text": _text_tokens(len(self.answer))}


def _sum_of_first_primes(count: int) -> int:
    """The emulator's own answer, by a sieve: fast enough to run on the event loop."""
    # Rosser's theorem: the n-th prime is below n (ln n + ln ln n) for n >= 6.
    limit = 13 if count < 6 else int(count * (math.log(count) + math.log(math.log(count))))
    sieve = bytearray([1]) * (limit + 1)
    sieve[:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return sum([n for n, prime in enumerate(sieve) if prime][:count])


_PRIMES_CODE = """\
def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n ** 0.5) + 1))


primes = []
candidate = 2
while len(primes) < {count}:
    if is_prime(candidate):
        primes.append(candidate)
    candidate += 1
print(sum(primes))
"""

_COUNT_CODE = """\
text = {text!r}
words = text.split()
print(f"{{len(words)}} words, {{len(text)}} characters")
"""


def _excerpt(prompt: str) -> str:
    return " ".join(prompt.split())[:_EXCERPT_CHARS]


def _plan_reply(
    *,
    model: str,
    prompt: str,
    media: Mapping[str, int],
    thought_tokens: int,
    summaries: bool,
    code_execution: bool,
    google_search: bool,
) -> _Reply:
    """The emulated model's reply: a pure function of the request."""
    excerpt = _excerpt(prompt)
    code = code_output = None
    primes = _PRIMES_PROMPT.search(prompt)
    count = int(primes.group(1)) if primes else 0
    if primes and 0 < count <= _MAX_PRIMES:
        total = _sum_of_first_primes(count)
        if code_execution:
            code = _PRIMES_CODE.format(count=count)
            code_output = f"{total}\n"
            answer = f"The code ran: the sum of the first {count} prime numbers is {total}."
        else:
            answer = f"The sum of the first {count} prime numbers is {total}."
    elif code_execution:
        text = prompt[:200]
        code = _COUNT_CODE.format(text=text)
        code_output = f"{len(text.split())} words, {len(text)} characters\n"
        answer = f"The code counted your prompt: {code_output.strip()}."
    else:
        answer = f"Emulated reply from {model}."
        if media:
            blocks = ", ".join(f"{media[name]} {name}" for name in _MODALITIES if media.get(name))
            answer += f" Received media blocks: {blocks}."
        if excerpt:
            answer += f' You said: "{excerpt}".'
    return _Reply(
        thought_tokens=thought_tokens,
        thought_summary=(
            f"Working out a reply to a {len(prompt.split())}-word prompt."
            if thought_tokens and summaries
            else None
        ),
        search_query=(excerpt or model) if google_search else None,
        code=code,
        code_output=code_output,
        answer=answer,
    )


def _signature(*parts: str) -> str:
    """A stand-in thought signature: opaque base64, stable for the same reply."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return base64.b64encode(digest[:24]).decode()


def _split_text(text: str, pieces: int = 3) -> list[str]:
    """``text`` cut at spaces into about ``pieces`` parts that join back to it."""
    size = max(1, len(text) // pieces)
    parts: list[str] = []
    start = 0
    while start < len(text):
        cut = text.find(" ", start + size)
        end = len(text) if cut == -1 or len(parts) == pieces - 1 else cut + 1
        parts.append(text[start:end])
        start = end
    return parts or [text]


def _thinking_tokens(model: str, level: object, budget: object = None) -> int:
    """Thought tokens for a request, by its thinking level and budget (see the docstring)."""
    if budget == 0:
        return 0
    if isinstance(level, str) and level.lower() in THOUGHT_TOKENS:
        return THOUGHT_TOKENS[level.lower()]
    default = THOUGHT_TOKENS[_DEFAULT_THINKING_LEVEL]
    if isinstance(budget, int) and budget > 0:
        return min(budget, default)
    if _THINKING_MODEL.match(model) or budget == -1:
        return default
    return 0


# --------------------------------------------------------------------------- usage on the wire


_MALFORMED_INTERACTION_USAGE: Final[Json] = {
    "total_input_tokens": "many",
    "total_output_tokens": -7,
    "total_tokens": "NaN",
    "input_tokens_by_modality": [{"modality": "text", "tokens": "lots"}],
}

_MALFORMED_USAGE_METADATA: Final[Json] = {
    "promptTokenCount": "many",
    "candidatesTokenCount": -7,
    "totalTokenCount": "NaN",
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": "lots"}],
}


def _by_modality(tokens: Mapping[str, int]) -> list[Json]:
    return [{"modality": name, "tokens": tokens[name]} for name in _MODALITIES if tokens.get(name)]


def _interaction_usage(usage: _Usage) -> Json:
    body: Json = {
        "total_input_tokens": _sum(usage.input),
        "total_cached_tokens": _sum(usage.cached),
        "total_tool_use_tokens": _sum(usage.tool_use),
        "total_output_tokens": _sum(usage.output),
        "total_thought_tokens": usage.thought,
        "total_tokens": usage.total,
        # No continuation hops here, so the first turn's input is all of it.
        "initial_input_tokens": _sum(usage.input),
        "input_tokens_by_modality": _by_modality(usage.input),
        "cached_tokens_by_modality": _by_modality(usage.cached),
        "tool_use_tokens_by_modality": _by_modality(usage.tool_use),
        "output_tokens_by_modality": _by_modality(usage.output),
    }
    if usage.searches:
        body["grounding_tool_count"] = [{"type": "google_search", "count": usage.searches}]
    return body


def _put_interaction_usage(
    target: Json, usage: _Usage, mode: UsageMode, key: str = "usage"
) -> None:
    if mode == "missing":
        return
    if mode == "malformed":
        target[key] = dict(_MALFORMED_INTERACTION_USAGE)
    else:
        target[key] = _interaction_usage(usage)


def _details(tokens: Mapping[str, int]) -> list[Json]:
    return [
        {"modality": name.upper(), "tokenCount": tokens[name]}
        for name in _MODALITIES
        if tokens.get(name)
    ]


def _usage_metadata(usage: _Usage) -> Json:
    """generateContent's ``usageMetadata``: optional counts appear only when non-zero."""
    body: Json = {
        "promptTokenCount": _sum(usage.input),
        "candidatesTokenCount": _sum(usage.output),
        "totalTokenCount": usage.total,
    }
    if usage.cached:
        body["cachedContentTokenCount"] = _sum(usage.cached)
    body["promptTokensDetails"] = _details(usage.input)
    if usage.cached:
        body["cacheTokensDetails"] = _details(usage.cached)
    if usage.output:
        body["candidatesTokensDetails"] = _details(usage.output)
    if usage.tool_use:
        body["toolUsePromptTokenCount"] = _sum(usage.tool_use)
        body["toolUsePromptTokensDetails"] = _details(usage.tool_use)
    if usage.thought:
        body["thoughtsTokenCount"] = usage.thought
    return body


def _put_usage_metadata(target: Json, usage: _Usage, mode: UsageMode) -> None:
    if mode == "missing":
        return
    target["usageMetadata"] = (
        dict(_MALFORMED_USAGE_METADATA) if mode == "malformed" else _usage_metadata(usage)
    )


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- Interactions API


@dataclass(frozen=True, slots=True)
class _PlannedStep:
    """One generated step: whole, as streamed (start and deltas), and its usage share."""

    step: Json
    start: Json
    deltas: tuple[Json, ...]
    usage: _Usage


@dataclass
class _InteractionInput:
    """An Interactions ``input`` as counted, and the parts the reply is built from."""

    tally: _Tally = field(default_factory=_Tally)
    messages: list[str] = field(default_factory=list)  # user text per user message
    user_step: Json | None = None  # this turn's input as the response echoes it


_CONTENT_TYPES: Final = frozenset({"text", *_MEDIA_TOKENS})


def _read_content(block: object, tally: _Tally, texts: list[str]) -> None:
    """Count one content block (text or media) of the Interactions API."""
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "text":
        tally.text(block.get("text"))
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
    elif isinstance(kind, str) and kind in _MEDIA_TOKENS:
        tally.media[kind] += 1


def _read_step(step: Mapping[str, object], tally: _Tally) -> None:
    """Count the text of a history step other than ``user_input`` (stateless multi-turn)."""
    kind = step.get("type")
    ignored: list[str] = []
    if kind == "model_output":
        for block in _list(step.get("content")):
            _read_content(block, tally, ignored)
    elif kind == "thought":
        for block in _list(step.get("summary")):
            _read_content(block, tally, ignored)
    elif kind in ("code_execution_call", "function_call"):
        arguments = step.get("arguments")
        code = arguments.get("code") if isinstance(arguments, dict) else None
        tally.text(code if isinstance(code, str) else json.dumps(arguments))
    elif kind in ("code_execution_result", "function_result"):
        result = step.get("result")
        if isinstance(result, list):
            for block in result:
                _read_content(block, tally, ignored)
        else:
            tally.text(result if isinstance(result, str) else json.dumps(result))


def _read_interaction_input(value: object) -> _InteractionInput:
    """Count an ``input`` in any of its shapes: string, content, contents, steps."""
    read = _InteractionInput()
    if value is None:
        return read
    if isinstance(value, str):
        read.tally.text(value)
        read.messages.append(value)
        read.user_step = {"type": "user_input", "content": [{"type": "text", "text": value}]}
        return read
    blocks = value if isinstance(value, list) else [value]
    if not blocks:
        return read
    if all(isinstance(b, dict) and b.get("type") in _CONTENT_TYPES for b in blocks):
        texts: list[str] = []
        for block in blocks:
            _read_content(block, read.tally, texts)
        read.messages.append("\n".join(texts))
        read.user_step = {"type": "user_input", "content": blocks}
        return read
    for step in blocks:
        if not isinstance(step, dict):
            raise _ApiError(400, "Invalid input: expected content blocks or steps.")
        if step.get("type") == "user_input":
            texts = []
            for block in _list(step.get("content")):
                _read_content(block, read.tally, texts)
            read.messages.append("\n".join(texts))
            read.user_step = step
        else:
            _read_step(step, read.tally)
    return read


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _tool_types(tools: object) -> set[str]:
    return {
        str(tool.get("type")) for tool in _list(tools) if isinstance(tool, dict) and "type" in tool
    }


def _plan_interaction_steps(
    reply: _Reply, prompt_usage: _Usage, signature: str
) -> tuple[list[_PlannedStep], _Usage]:
    """The generated steps of an interaction and the usage they add up to.

    The prompt's tokens are the first step's share; each later step adds what
    it generated, so the cumulative usage on each ``step.stop`` grows to the
    final figure.
    """
    code_tokens, result_tokens, answer_tokens = reply.usage_parts
    steps: list[_PlannedStep] = []
    pending = prompt_usage  # charged to the first step

    def add(step: Json, start: Json, deltas: Iterable[Json], usage: _Usage) -> None:
        nonlocal pending
        steps.append(_PlannedStep(step, start, tuple(deltas), pending + usage))
        pending = _Usage()

    if reply.thought_tokens:
        thought: Json = {"type": "thought", "signature": signature}
        deltas: list[Json] = []
        if reply.thought_summary is not None:
            summary = {"type": "text", "text": reply.thought_summary}
            thought["summary"] = [summary]
            deltas.append({"type": "thought_summary", "content": summary})
        deltas.append({"type": "thought_signature", "signature": signature})
        add(thought, {"type": "thought"}, deltas, _Usage(thought=reply.thought_tokens))
    if reply.search_query is not None:
        call_id = _new_id("search_")
        queries = {"queries": [reply.search_query]}
        results = [{"search_suggestions": f"<div>Results for {reply.search_query}</div>"}]
        add(
            {"type": "google_search_call", "id": call_id, "arguments": queries},
            {"type": "google_search_call", "id": call_id, "arguments": {}},
            [{"type": "google_search_call", "arguments": queries}],
            _Usage(searches=1),
        )
        add(
            {"type": "google_search_result", "call_id": call_id, "result": results},
            {"type": "google_search_result", "call_id": call_id, "result": []},
            [{"type": "google_search_result", "result": results}],
            _Usage(),
        )
    if reply.code is not None and reply.code_output is not None:
        call_id = _new_id("code_")
        arguments = {"code": reply.code, "language": "python"}
        add(
            {"type": "code_execution_call", "id": call_id, "arguments": arguments},
            {"type": "code_execution_call", "id": call_id, "arguments": {}},
            [{"type": "code_execution_call", "arguments": arguments}],
            _Usage(output=code_tokens),
        )
        result = {"result": reply.code_output, "is_error": False}
        add(
            {"type": "code_execution_result", "call_id": call_id} | result,
            {"type": "code_execution_result", "call_id": call_id, "result": ""},
            [{"type": "code_execution_result"} | result],
            # The prompt, the code and its result are fed back to the model.
            _Usage(
                output=result_tokens,
                tool_use=_add(prompt_usage.input, code_tokens, result_tokens),
            ),
        )
    add(
        {"type": "model_output", "content": [{"type": "text", "text": reply.answer}]},
        {"type": "model_output", "content": []},
        [{"type": "text", "text": piece} for piece in _split_text(reply.answer)],
        _Usage(output=answer_tokens),
    )
    total = _Usage()
    for planned in steps:
        total = total + planned.usage
    return steps, total


def _interaction_tier(body: Mapping[str, object]) -> str:
    tier = body.get("service_tier", _DEFAULT_TIER)
    if not isinstance(tier, str) or tier not in _INTERACTION_TIERS:
        raise _ApiError(
            400, f"Invalid service_tier {tier!r}: expected one of {sorted(_INTERACTION_TIERS)}."
        )
    return tier


async def _create_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    body = await _json_body(request)
    model, agent = body.get("model"), body.get("agent")
    if not isinstance(model, str) and not isinstance(agent, str):
        raise _ApiError(400, "Either model or agent must be set.")
    name = model if isinstance(model, str) else str(agent)
    tier = _interaction_tier(body)
    usage_mode = _usage_mode(request)

    previous_id = body.get("previous_interaction_id")
    previous = None
    if previous_id is not None:
        if not isinstance(previous_id, str):
            raise _ApiError(400, "previous_interaction_id must be a string.")
        previous = state.lookup(previous_id)

    read = _read_interaction_input(body.get("input"))
    system = body.get("system_instruction")
    read.tally.text(system)
    prompt_usage = _Usage(input=read.tally.tokens())
    if previous is not None:
        prompt_usage = prompt_usage + previous.context_usage
        prompt_usage = replace(prompt_usage, cached=previous.cached_for_next_turn)

    config = body.get("generation_config")
    config = config if isinstance(config, dict) else {}
    tools = _tool_types(body.get("tools"))
    # Agents run their own (thinking) loop whatever the model name says.
    thought_tokens = _thinking_tokens(
        name if isinstance(model, str) else "gemini-3-agent", config.get("thinking_level")
    )
    reply = _plan_reply(
        model=name,
        prompt=read.messages[-1] if read.messages else "",
        media=read.tally.media,
        thought_tokens=thought_tokens,
        summaries=config.get("thinking_summaries") == "auto",
        code_execution="code_execution" in tools,
        google_search="google_search" in tools,
    )
    steps, usage = _plan_interaction_steps(
        reply, prompt_usage, _signature(name, reply.answer, str(reply.thought_tokens))
    )
    background = body.get("background") is True
    if background and body.get("store") is False:
        raise _ApiError(400, "A background interaction must be stored: store cannot be false.")
    labels = body.get("labels")
    interaction = EmulatedInteraction(
        interaction_id=_new_id("v1_"),
        model=model if isinstance(model, str) else None,
        agent=agent if isinstance(agent, str) else None,
        service_tier=tier,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        previous_interaction_id=previous_id if isinstance(previous_id, str) else None,
        request_input=body.get("input"),
        user_step=read.user_step,
        steps=steps,
        usage=usage,
        background=background,
        usage_mode=usage_mode,
        ready_at=time.monotonic() + (state.config.background_seconds if background else 0.0),
    )
    if body.get("store") is not False:
        state.store(interaction)
    if body.get("stream") is True:
        return await _stream_interaction(request, interaction, usage_mode, after_event=None)
    return _json(interaction.resource(usage_mode=usage_mode), tier)


def _query_flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


async def _get_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    interaction = state.lookup(request.match_info["interaction_id"])
    # A poll without the trigger keeps the mode the interaction was created with.
    usage_mode = _usage_mode(request) or interaction.usage_mode
    if _query_flag(request, "stream"):
        after = request.query.get("last_event_id") or None
        return await _stream_interaction(request, interaction, usage_mode, after_event=after)
    body = interaction.resource(
        usage_mode=usage_mode, include_input=_query_flag(request, "include_input")
    )
    return _json(body, interaction.service_tier)


async def _cancel_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    interaction = state.lookup(request.match_info["interaction_id"])
    if not interaction.background or interaction.status() != "in_progress":
        raise _ApiError(
            400,
            "Only a background interaction that is still running can be cancelled.",
            "FAILED_PRECONDITION",
        )
    interaction.cancel()
    usage_mode = _usage_mode(request) or interaction.usage_mode
    return _json(interaction.resource(usage_mode=usage_mode), interaction.service_tier)


async def _delete_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    interaction = state.lookup(request.match_info["interaction_id"])
    del state.interactions[interaction.id]
    interaction.forget()
    return _json({}, interaction.service_tier)


def _sse(event: object) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


async def _stream_interaction(
    request: web.Request,
    interaction: EmulatedInteraction,
    usage_mode: UsageMode,
    *,
    after_event: str | None,
) -> web.StreamResponse:
    """Send an interaction's events, following it until it ends, then ``[DONE]``."""
    position = 0
    if after_event is not None:
        ids = [event["event_id"] for event in interaction.events(usage_mode=usage_mode)]
        if after_event not in ids:
            raise _ApiError(400, f"Unknown last_event_id {after_event!r}.")
        position = ids.index(after_event) + 1
    delay = _chunk_delay(request)
    response = await _start_stream(request, "text/event-stream", interaction.service_tier)
    try:
        first = True
        while True:
            now = time.monotonic()
            events = interaction.events(usage_mode=usage_mode, now=now)
            if interaction.deleted:
                error = {"code": "not_found", "message": "The interaction was deleted."}
                await response.write(_sse({"event_type": "error", "error": error}))
                break
            for event in events[position:]:
                if not first:
                    await asyncio.sleep(delay)
                first = False
                await response.write(_sse(event))
            position = len(events)
            if interaction.status(now) != "in_progress":
                break
            interaction.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interaction.changed.wait(), interaction.ready_at - now)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream; there is nobody left to answer.
        pass
    return response


# --------------------------------------------------------------------------- generateContent


@dataclass
class _ContentsInput:
    """generateContent ``contents`` as counted."""

    tally: _Tally = field(default_factory=_Tally)
    history: _Tally = field(default_factory=_Tally)  # every content before the last
    prompt: str = ""  # text of the last user content


def _field(mapping: object, name: str) -> object:
    """A request field by its camelCase name, or by its snake_case one.

    Google's JSON parser accepts both spellings, and the SDK uses both: it
    sends ``generationConfig`` but ``thinkingConfig`` with ``thinking_level``.
    """
    if not isinstance(mapping, dict):
        return None
    if name in mapping:
        return mapping[name]
    return mapping.get(re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name))


def _read_part(part: object, tally: _Tally, texts: list[str]) -> None:
    text = _field(part, "text")
    if isinstance(text, str):
        tally.text(text)
        texts.append(text)
    for blob_key in ("inlineData", "fileData"):
        blob = _field(part, blob_key)
        if isinstance(blob, dict):
            tally.media[_modality_of_mime(_field(blob, "mimeType"))] += 1
    for key, inner in (("executableCode", "code"), ("codeExecutionResult", "output")):
        tally.text(_field(_field(part, key), inner))
    for key in ("functionCall", "functionResponse"):
        value = _field(part, key)
        if value is not None:
            tally.text(json.dumps(value))


def _read_contents(contents: object, system: object) -> _ContentsInput:
    items = contents if isinstance(contents, list) else [contents] if contents else []
    if not items:
        raise _ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
    read = _ContentsInput()
    for position, content in enumerate(items):
        if not isinstance(content, dict):
            raise _ApiError(400, "Invalid contents: expected Content objects.")
        texts: list[str] = []
        for part in _list(_field(content, "parts")):
            _read_part(part, read.tally, texts)
            if position < len(items) - 1:
                _read_part(part, read.history, [])
        if content.get("role", "user") == "user":
            read.prompt = "\n".join(texts)
    if isinstance(system, str):
        read.tally.text(system)
    elif isinstance(system, dict):
        for part in _list(_field(system, "parts")):
            _read_part(part, read.tally, [])
    return read


def _gc_tier(body: Mapping[str, object]) -> str:
    tier = _field(body, "serviceTier")
    if tier is None or (isinstance(tier, str) and tier.lower() == "unspecified"):
        return _DEFAULT_TIER
    if not isinstance(tier, str) or tier.lower() not in _INTERACTION_TIERS:
        raise _ApiError(400, f"Invalid serviceTier {tier!r}.")
    return tier.lower()


def _has_tool(tools: object, name: str) -> bool:
    return any(_field(tool, name) is not None for tool in _list(tools))


@dataclass(frozen=True, slots=True)
class _GcChunk:
    """One streamed chunk: its parts and its share of the usage."""

    parts: tuple[Json, ...]
    usage: _Usage


@dataclass(frozen=True, slots=True)
class _GcPlan:
    model: str
    tier: str
    chunks: tuple[_GcChunk, ...]
    search_query: str | None

    @property
    def usage(self) -> _Usage:
        total = _Usage()
        for chunk in self.chunks:
            total = total + chunk.usage
        return total


async def _plan_generate(request: web.Request) -> _GcPlan:
    """Parse a generateContent request and plan its reply as stream chunks.

    The non-streaming response is these chunks merged, so both modes report
    the same final usage for the same request.
    """
    body = await _json_body(request)
    model = request.match_info["model"]
    tier = _gc_tier(body)
    read = _read_contents(body.get("contents"), _field(body, "systemInstruction"))
    thinking = _field(_field(body, "generationConfig"), "thinkingConfig")
    reply = _plan_reply(
        model=model,
        prompt=read.prompt,
        media=read.tally.media,
        thought_tokens=_thinking_tokens(
            model, _field(thinking, "thinkingLevel"), _field(thinking, "thinkingBudget")
        ),
        summaries=_field(thinking, "includeThoughts") is True,
        code_execution=_has_tool(body.get("tools"), "codeExecution"),
        google_search=_has_tool(body.get("tools"), "googleSearch"),
    )
    history = read.history.tokens() if read.history.chars or read.history.media else {}
    prompt = _Usage(input=read.tally.tokens(), cached=history, thought=reply.thought_tokens)
    code_tokens, result_tokens, _ = reply.usage_parts
    chunks: list[_GcChunk] = []
    pending = prompt  # the prompt and the thinking are charged to the first chunk
    if reply.thought_summary is not None:
        chunks.append(_GcChunk(({"text": reply.thought_summary, "thought": True},), pending))
        pending = _Usage()
    if reply.code is not None and reply.code_output is not None:
        code_part = {"executableCode": {"language": "PYTHON", "code": reply.code}}
        chunks.append(_GcChunk((code_part,), pending + _Usage(output=code_tokens)))
        pending = _Usage()
        result_part = {
            "codeExecutionResult": {"outcome": "OUTCOME_OK", "output": reply.code_output}
        }
        tool_use = _add(prompt.input, code_tokens, result_tokens)
        chunks.append(_GcChunk((result_part,), _Usage(output=result_tokens, tool_use=tool_use)))
    # Text tokens are charged as the running ceil of the text so far, so the
    # chunks add up to exactly the whole answer's tokens.
    sent = 0
    for piece in _split_text(reply.answer):
        share = _text_tokens(sent + len(piece)) - _text_tokens(sent)
        sent += len(piece)
        chunks.append(_GcChunk(({"text": piece},), pending + _Usage(output={"text": share})))
        pending = _Usage()
    return _GcPlan(model, tier, tuple(chunks), reply.search_query)


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
    usage: _Usage,
    mode: UsageMode,
    response_id: str,
    *,
    last: bool,
) -> Json:
    candidate: Json = {"content": {"parts": list(parts), "role": "model"}}
    if last:
        candidate["finishReason"] = "STOP"
        if plan.search_query is not None:
            candidate["groundingMetadata"] = {
                "webSearchQueries": [plan.search_query],
                "searchEntryPoint": {
                    "renderedContent": f"<div>Results for {plan.search_query}</div>"
                },
            }
    candidate["index"] = 0
    body: Json = {"candidates": [candidate]}
    _put_usage_metadata(body, usage, mode)
    body["modelVersion"] = plan.model
    body["responseId"] = response_id
    return body


def _stream_bodies(plan: _GcPlan, mode: UsageMode) -> Iterator[Json]:
    """The chunks of a streamed reply, each with the usage so far."""
    response_id = secrets.token_urlsafe(16)
    so_far = _Usage()
    for number, chunk in enumerate(plan.chunks, start=1):
        so_far = so_far + chunk.usage
        last = number == len(plan.chunks)
        yield _gc_response(plan, chunk.parts, so_far, mode, response_id, last=last)


async def _generate_content(request: web.Request) -> web.StreamResponse:
    plan = await _plan_generate(request)
    parts = _merge_text_parts(part for chunk in plan.chunks for part in chunk.parts)
    body = _gc_response(
        plan, parts, plan.usage, _usage_mode(request), secrets.token_urlsafe(16), last=True
    )
    return _json(body, plan.tier)


async def _stream_generate(request: web.Request) -> web.StreamResponse:
    plan = await _plan_generate(request)
    mode = _usage_mode(request)
    delay = _chunk_delay(request)
    sse = request.query.get("alt") == "sse"
    response = await _start_stream(
        request, "text/event-stream" if sse else "application/json; charset=UTF-8", plan.tier
    )
    try:
        for number, chunk in enumerate(_stream_bodies(plan, mode)):
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


async def _count_tokens(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    inner = _field(body, "generateContentRequest")
    source = inner if isinstance(inner, dict) else body
    read = _read_contents(source.get("contents"), _field(source, "systemInstruction"))
    return _json({"totalTokens": _sum(read.tally.tokens())}, _DEFAULT_TIER)


# --------------------------------------------------------------------------- file uploads


@dataclass
class _UploadSession:
    mime_type: str
    display_name: str | None
    received: int = 0


def _file_resource(request: web.Request, size: int, mime_type: str, name: str | None) -> Json:
    file_id = secrets.token_hex(6)
    now = datetime.now(UTC)
    version = request.match_info["version"]
    body: Json = {
        "name": f"files/{file_id}",
        "mimeType": mime_type,
        "sizeBytes": str(size),
        "createTime": _timestamp(now),
        "updateTime": _timestamp(now),
        "expirationTime": _timestamp(now + timedelta(hours=48)),
        "uri": f"{request.scheme}://{request.host}/{version}/files/{file_id}",
        "state": "ACTIVE",
        "source": "UPLOADED",
    }
    if name:
        body["displayName"] = name
    return {"file": body}


async def _count_body(request: web.Request) -> int:
    """Read the request body as it arrives, keeping only its length."""
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return size


async def _upload_file(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    command = request.headers.get("x-goog-upload-command", "").lower()
    upload_id = request.query.get("upload_id")

    if "start" in command:
        metadata = await _json_body(request) if request.can_read_body else {}
        file = metadata.get("file")
        file = file if isinstance(file, dict) else {}
        declared = request.headers.get("x-goog-upload-header-content-type") or _field(
            file, "mimeType"
        )
        display = _field(file, "displayName")
        upload_id = secrets.token_urlsafe(24)
        state.upload_sessions[upload_id] = _UploadSession(
            mime_type=str(declared or "application/octet-stream"),
            display_name=display if isinstance(display, str) else None,
        )
        while len(state.upload_sessions) > _MAX_UPLOAD_SESSIONS:
            state.upload_sessions.popitem(last=False)
        version = request.match_info["version"]
        url = (
            f"{request.scheme}://{request.host}/upload/{version}/files"
            f"?upload_id={upload_id}&upload_protocol=resumable"
        )
        return web.Response(
            headers={
                "x-goog-upload-url": url,
                "x-goog-upload-status": "active",
                _TIER_HEADER: _DEFAULT_TIER,
            }
        )

    if upload_id is not None:
        session = state.upload_sessions.get(upload_id)
        if session is None:
            raise _ApiError(404, "Unknown upload session.")
        session.received += await _count_body(request)
        if "finalize" not in command:
            return web.Response(
                headers={"x-goog-upload-status": "active", _TIER_HEADER: _DEFAULT_TIER}
            )
        del state.upload_sessions[upload_id]
        body = _file_resource(request, session.received, session.mime_type, session.display_name)
        return web.json_response(
            body, headers={"x-goog-upload-status": "final", _TIER_HEADER: _DEFAULT_TIER}
        )

    size = await _count_body(request)
    mime = request.headers.get("content-type", "application/octet-stream")
    return _json(_file_resource(request, size, mime, None), _DEFAULT_TIER)
