"""The Interactions API: create, get (and stream or resume), cancel, delete.

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

Streams take the shape of Google's documentation transcripts (the Gemini
API streaming guide): each event is an ``event: <event_type>`` line then a
``data: <json>`` line (the JSON also carries ``event_id``), and the stream
ends with ``event: done`` / ``data: [DONE]``. The events:
``interaction.created``, ``interaction.status_update`` (in_progress), for every
generated step ``step.start`` / ``step.delta``... / ``step.stop`` with the
``index`` counting generated steps from 0, then ``interaction.completed``: the
interaction's head (no ``steps``) with the final ``usage``, also when it ended
cancelled or ``requires_continuation``. Usage appears there only: never on
``step.stop`` or a status update. A stream cut by ``x-emulator-cut-after``
simply stops, mid-body.

Continuations (``x-emulator-continuations``, see ``triggers``): each hop is
its own interaction; a hop that is not the last ends ``requires_continuation``
with a ``continuation_token``; ``continuation_token`` (with
``previous_interaction_id`` = its issuer, or alone when nothing is stored)
creates the next hop. An unknown token, or one that the named
previous interaction did not issue, is 400 INVALID_ARGUMENT.

Usage: with ``previous_interaction_id`` the previous interaction's input and
output tokens join this turn's input, and its input (its whole prompt) is
reported as cached (``total_cached_tokens`` and ``cached_tokens_by_modality``).
Code execution (``{"type": "code_execution"}``) bills tool-use tokens = input
+ code + result tokens and output tokens = code + result + answer tokens;
``google_search`` adds a search call and result and ``grounding_tool_count``
``[{"type": "google_search", "count": 1}]``. ``tool_search`` (google-genai
3.6) with function tools marked ``defer_loading`` adds a ``tool_search_call``
naming them and a ``tool_search_result`` carrying their definitions, whose
tokens (``ceil(len(json.dumps(definitions)) / 4)``) are tool-use input. A
cancelled interaction bills its input only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from aiohttp import web

from .replies import Reply, answer_pieces, plan_reply, signature, split_text, thinking_tokens
from .state import emulator_state_key
from .triggers import chunk_delay, cut_after, requested_continuations, requested_usage_mode
from .usage import (
    MEDIA_TOKENS,
    Tally,
    Tokens,
    Usage,
    UsageMode,
    add_tokens,
    put_interaction_usage,
    text_tokens,
)
from .wire import (
    DEFAULT_TIER,
    SERVICE_TIERS,
    ApiError,
    Json,
    as_list,
    drop_connection,
    json_body,
    json_response,
    new_id,
    start_stream,
    timestamp,
)

# Statuses of an interaction whose planned steps were all generated.
_GENERATED: Final = frozenset({"completed", "requires_continuation"})


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
        usage: Usage,
        background: bool,
        usage_mode: UsageMode,
        ready_at: float,
        continuation_token: str | None = None,
        remaining: tuple[str, ...] = (),
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
        # A reply cut by the per-request decode limit: the token the client
        # sends back, and the answer text the later hops will generate.
        self.continuation_token = continuation_token
        self.remaining = remaining
        self.cancelled_at: float | None = None
        self.deleted = False
        # Set whenever the state changes by a request (cancel, delete), so
        # streams following a running interaction wake up at once.
        self.changed = asyncio.Event()

    @property
    def context_usage(self) -> Usage:
        """What this interaction adds to a follow-up turn's context."""
        if self.cancelled_at is not None:
            return Usage(input=dict(self._usage.input))
        return Usage(input=add_tokens(self._usage.input, self._usage.output))

    @property
    def cached_for_next_turn(self) -> Tokens:
        """The part of a follow-up turn's context reported as cached: this prompt."""
        return dict(self._usage.input)

    def status(self, now: float | None = None) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if (time.monotonic() if now is None else now) >= self.ready_at:
            return "completed" if self.continuation_token is None else "requires_continuation"
        return "in_progress"

    def cancel(self) -> None:
        self.cancelled_at = time.monotonic()
        self.changed.set()

    def forget(self) -> None:
        self.deleted = True
        self.changed.set()

    def final_usage(self, status: str) -> Usage | None:
        if status in _GENERATED:
            return self._usage
        if status == "cancelled":
            return Usage(input=dict(self._usage.input), cached=dict(self._usage.cached))
        return None

    def resource(
        self, *, usage_mode: UsageMode, include_input: bool = False, now: float | None = None
    ) -> Json:
        """The Interaction resource as ``GET /interactions/{id}`` answers it."""
        status = self.status(now)
        body = self._head(status)
        if status == "requires_continuation":
            body["continuation_token"] = self.continuation_token
        if self.previous_interaction_id is not None:
            body["previous_interaction_id"] = self.previous_interaction_id
        if self.labels:
            body["labels"] = self.labels
        if include_input and self._input is not None:
            body["input"] = self._input
        body["steps"] = self._resource_steps(status)
        usage = self.final_usage(status)
        if usage is not None:
            put_interaction_usage(body, usage, usage_mode)
        return body

    def events(self, *, usage_mode: UsageMode, now: float | None = None) -> list[Json]:
        """The SSE events of this interaction as far as its state allows.

        The shape of Google's documentation transcripts: step indexes count
        the generated steps from 0; ``step.stop`` and status updates carry no
        usage; ``interaction.completed`` (also for a cancelled or a
        ``requires_continuation`` interaction) carries the final usage and no
        steps. Events before a state change keep their ids as the state moves
        on, so a client can resume with ``last_event_id`` across the change.
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
        if status in _GENERATED:
            for index, planned in enumerate(self._steps):
                events.append({"event_type": "step.start", "index": index, "step": planned.start})
                events.extend(
                    {"event_type": "step.delta", "index": index, "delta": delta}
                    for delta in planned.deltas
                )
                events.append({"event_type": "step.stop", "index": index})
        if status != "in_progress":
            final = self.final_usage(status)
            assert final is not None
            interaction = self._head(status) | {"object": "interaction"}
            if status == "requires_continuation":
                interaction["continuation_token"] = self.continuation_token
            put_interaction_usage(interaction, final, usage_mode)
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
        head["created"] = timestamp(self._created_wall)
        head["updated"] = timestamp(self._updated_wall(status))
        head["service_tier"] = self.service_tier
        return head

    def _updated_wall(self, status: str) -> datetime:
        if status == "in_progress":
            return self._created_wall
        ended = self.cancelled_at if self.cancelled_at is not None else self.ready_at
        return self._created_wall + timedelta(seconds=max(0.0, ended - self._created_monotonic))

    def _resource_steps(self, status: str) -> list[Json]:
        steps = [] if self._user_step is None else [self._user_step]
        if status in _GENERATED:
            steps.extend(planned.step for planned in self._steps)
        return steps


@dataclass(frozen=True, slots=True)
class _PlannedStep:
    """One generated step: whole, as streamed (start and deltas), and its usage share."""

    step: Json
    start: Json
    deltas: tuple[Json, ...]
    usage: Usage


@dataclass
class _InteractionInput:
    """An Interactions ``input`` as counted, and the parts the reply is built from."""

    tally: Tally = field(default_factory=Tally)
    messages: list[str] = field(default_factory=list)  # user text per user message
    user_step: Json | None = None  # this turn's input as the response echoes it


_CONTENT_TYPES: Final = frozenset({"text", *MEDIA_TOKENS})


def read_content(block: object, tally: Tally, texts: list[str]) -> None:
    """Count one content block (text or media) of the Interactions API."""
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "text":
        tally.text(block.get("text"))
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
    elif isinstance(kind, str) and kind in MEDIA_TOKENS:
        tally.media[kind] += 1


def _read_step(step: Mapping[str, object], tally: Tally) -> None:
    """Count the text of a history step other than ``user_input`` (stateless multi-turn)."""
    kind = step.get("type")
    ignored: list[str] = []
    if kind == "model_output":
        for block in as_list(step.get("content")):
            read_content(block, tally, ignored)
    elif kind == "thought":
        for block in as_list(step.get("summary")):
            read_content(block, tally, ignored)
    elif kind in ("code_execution_call", "function_call"):
        arguments = step.get("arguments")
        code = arguments.get("code") if isinstance(arguments, dict) else None
        tally.text(code if isinstance(code, str) else json.dumps(arguments))
    elif kind in ("code_execution_result", "function_result"):
        result = step.get("result")
        if isinstance(result, list):
            for block in result:
                read_content(block, tally, ignored)
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
            read_content(block, read.tally, texts)
        read.messages.append("\n".join(texts))
        read.user_step = {"type": "user_input", "content": blocks}
        return read
    for step in blocks:
        if not isinstance(step, dict):
            raise ApiError(400, "Invalid input: expected content blocks or steps.")
        if step.get("type") == "user_input":
            texts = []
            for block in as_list(step.get("content")):
                read_content(block, read.tally, texts)
            read.messages.append("\n".join(texts))
            read.user_step = step
        else:
            _read_step(step, read.tally)
    return read


def _tool_types(tools: object) -> set[str]:
    return {
        str(tool.get("type"))
        for tool in as_list(tools)
        if isinstance(tool, dict) and "type" in tool
    }


def _deferred_functions(tools: object) -> list[Json]:
    """The function tools a ``tool_search`` tool would load: those with ``defer_loading``."""
    if "tool_search" not in _tool_types(tools):
        return []
    return [
        tool
        for tool in as_list(tools)
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and tool.get("defer_loading") is True
    ]


def _plan_interaction_steps(
    reply: Reply, prompt_usage: Usage, signature: str, deferred: Sequence[Json] = ()
) -> tuple[list[_PlannedStep], Usage]:
    """The generated steps of an interaction and the usage they add up to.

    The prompt's tokens are the first step's share; each later step adds what
    it generated. ``deferred`` are the function tools a ``tool_search`` loads.
    """
    code_tokens, result_tokens, answer_tokens = reply.usage_parts
    steps: list[_PlannedStep] = []
    pending = prompt_usage  # charged to the first step

    def add(step: Json, start: Json, deltas: Iterable[Json], usage: Usage) -> None:
        nonlocal pending
        steps.append(_PlannedStep(step, start, tuple(deltas), pending + usage))
        pending = Usage()

    if reply.thought_tokens:
        thought: Json = {"type": "thought", "signature": signature}
        deltas: list[Json] = []
        if reply.thought_summary is not None:
            summary = {"type": "text", "text": reply.thought_summary}
            thought["summary"] = [summary]
            deltas.append({"type": "thought_summary", "content": summary})
        deltas.append({"type": "thought_signature", "signature": signature})
        add(thought, {"type": "thought"}, deltas, Usage(thought=reply.thought_tokens))
    if deferred:
        call_id = new_id("tools_")
        names = {"function_names": [str(function.get("name")) for function in deferred]}
        add(
            {"type": "tool_search_call", "id": call_id, "arguments": names},
            {"type": "tool_search_call", "id": call_id, "arguments": {}},
            [{"type": "tool_search_call", "arguments": names}],
            Usage(),
        )
        # The definitions it loads are fed to the model: tool-use input.
        loaded = text_tokens(len(json.dumps(list(deferred))))
        add(
            {"type": "tool_search_result", "call_id": call_id, "result": list(deferred)},
            {"type": "tool_search_result", "call_id": call_id},
            [{"type": "tool_search_result", "result": list(deferred)}],
            Usage(tool_use={"text": loaded}),
        )
    if reply.search_query is not None:
        call_id = new_id("search_")
        queries = {"queries": [reply.search_query]}
        results = [{"search_suggestions": f"<div>Results for {reply.search_query}</div>"}]
        add(
            {"type": "google_search_call", "id": call_id, "arguments": queries},
            {"type": "google_search_call", "id": call_id, "arguments": {}},
            [{"type": "google_search_call", "arguments": queries}],
            Usage(searches=1),
        )
        add(
            {"type": "google_search_result", "call_id": call_id, "result": results},
            {"type": "google_search_result", "call_id": call_id, "result": []},
            [{"type": "google_search_result", "result": results}],
            Usage(),
        )
    if reply.code is not None and reply.code_output is not None:
        call_id = new_id("code_")
        arguments = {"code": reply.code, "language": "python"}
        add(
            {"type": "code_execution_call", "id": call_id, "arguments": arguments},
            {"type": "code_execution_call", "id": call_id, "arguments": {}},
            [{"type": "code_execution_call", "arguments": arguments}],
            Usage(output=code_tokens),
        )
        result = {"result": reply.code_output, "is_error": False}
        add(
            {"type": "code_execution_result", "call_id": call_id} | result,
            {"type": "code_execution_result", "call_id": call_id, "result": ""},
            [{"type": "code_execution_result"} | result],
            # The prompt, the code and its result are fed back to the model.
            Usage(
                output=result_tokens,
                tool_use=add_tokens(prompt_usage.input, code_tokens, result_tokens),
            ),
        )
    add(
        {"type": "model_output", "content": [{"type": "text", "text": reply.answer}]},
        {"type": "model_output", "content": []},
        [{"type": "text", "text": piece} for piece in split_text(reply.answer)],
        Usage(output=answer_tokens),
    )
    total = Usage()
    for planned in steps:
        total = total + planned.usage
    return steps, total


def _interaction_tier(body: Mapping[str, object]) -> str:
    tier = body.get("service_tier", DEFAULT_TIER)
    if not isinstance(tier, str) or tier not in SERVICE_TIERS:
        raise ApiError(
            400, f"Invalid service_tier {tier!r}: expected one of {sorted(SERVICE_TIERS)}."
        )
    return tier


async def create_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    body = await json_body(request)
    model, agent = body.get("model"), body.get("agent")
    if not isinstance(model, str) and not isinstance(agent, str):
        raise ApiError(400, "Either model or agent must be set.")
    name = model if isinstance(model, str) else str(agent)
    tier = _interaction_tier(body)
    usage_mode = requested_usage_mode(request)

    previous_id = body.get("previous_interaction_id")
    previous = None
    if previous_id is not None:
        if not isinstance(previous_id, str):
            raise ApiError(400, "previous_interaction_id must be a string.")
        previous = state.lookup(previous_id)
    token = body.get("continuation_token")
    issuer = None if token is None else _token_issuer(state.continued(token), previous)

    if issuer is not None:
        # A continuation hop: no new input (the SDK resends the original one
        # only when nothing is stored, and it is already in the issuer's
        # context). The hop re-prefills everything so far and generates the
        # next piece of the answer.
        read = _InteractionInput()
        prompt_usage = replace(issuer.context_usage, cached=issuer.cached_for_next_turn)
        pieces = issuer.remaining
        reply = Reply(
            thought_tokens=0,
            thought_summary=None,
            search_query=None,
            code=None,
            code_output=None,
            answer=pieces[0],
        )
        deferred = []
    else:
        read = _read_interaction_input(body.get("input"))
        read.tally.text(body.get("system_instruction"))
        prompt_usage = Usage(input=read.tally.tokens())
        if previous is not None:
            prompt_usage = prompt_usage + previous.context_usage
            prompt_usage = replace(prompt_usage, cached=previous.cached_for_next_turn)
        reply = _plan_fresh_reply(body, name, read)
        deferred = _deferred_functions(body.get("tools"))
        pieces = (reply.answer,)
        hops = requested_continuations(request)
        if hops and body.get("background") is not True:
            # The server continues a background interaction by itself.
            pieces = answer_pieces(reply.answer, hops + 1)
            reply = replace(reply, answer=pieces[0])
    steps, usage = _plan_interaction_steps(
        reply, prompt_usage, signature(name, reply.answer, str(reply.thought_tokens)), deferred
    )
    background = body.get("background") is True
    if background and body.get("store") is False:
        raise ApiError(400, "A background interaction must be stored: store cannot be false.")
    labels = body.get("labels")
    interaction = EmulatedInteraction(
        interaction_id=new_id("v1_"),
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
        continuation_token=new_id("ct_") if len(pieces) > 1 else None,
        remaining=tuple(pieces[1:]),
    )
    if interaction.continuation_token is not None:
        state.remember_token(interaction.continuation_token, interaction)
    if body.get("store") is not False:
        state.store(interaction)
    if body.get("stream") is True:
        return await _stream_interaction(request, interaction, usage_mode, after_event=None)
    return json_response(interaction.resource(usage_mode=usage_mode), tier)


def _plan_fresh_reply(body: Mapping[str, object], name: str, read: _InteractionInput) -> Reply:
    """The reply to a turn's input, by the request's tools and generation config."""
    config = body.get("generation_config")
    config = config if isinstance(config, dict) else {}
    tools = _tool_types(body.get("tools"))
    # Agents run their own (thinking) loop whatever the model name says.
    thought_tokens = thinking_tokens(
        name if isinstance(body.get("model"), str) else "gemini-3-agent",
        config.get("thinking_level"),
    )
    return plan_reply(
        model=name,
        prompt=read.messages[-1] if read.messages else "",
        media=read.tally.media,
        thought_tokens=thought_tokens,
        summaries=config.get("thinking_summaries") == "auto",
        code_execution="code_execution" in tools,
        google_search="google_search" in tools,
    )


def _token_issuer(
    issuer: EmulatedInteraction | None, previous: EmulatedInteraction | None
) -> EmulatedInteraction:
    """The interaction a ``continuation_token`` continues, checked as Google checks it.

    With ``store`` on, the SDK sends the issuing interaction as
    ``previous_interaction_id`` and the server checks the token belongs to
    it; without, the token stands alone.
    """
    if issuer is None or not issuer.remaining:
        raise ApiError(400, "Invalid continuation_token.")
    if previous is not None and previous is not issuer:
        raise ApiError(
            400, "continuation_token was not issued by the interaction in previous_interaction_id."
        )
    return issuer


def _query_flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


async def get_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    interaction = state.lookup(request.match_info["interaction_id"])
    # A poll without the trigger keeps the mode the interaction was created with.
    usage_mode = requested_usage_mode(request) or interaction.usage_mode
    if _query_flag(request, "stream"):
        after = request.query.get("last_event_id") or None
        return await _stream_interaction(request, interaction, usage_mode, after_event=after)
    body = interaction.resource(
        usage_mode=usage_mode, include_input=_query_flag(request, "include_input")
    )
    return json_response(body, interaction.service_tier)


async def cancel_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    interaction = state.lookup(request.match_info["interaction_id"])
    if not interaction.background or interaction.status() != "in_progress":
        raise ApiError(
            400,
            "Only a background interaction that is still running can be cancelled.",
            "FAILED_PRECONDITION",
        )
    interaction.cancel()
    usage_mode = requested_usage_mode(request) or interaction.usage_mode
    return json_response(interaction.resource(usage_mode=usage_mode), interaction.service_tier)


async def delete_interaction(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    interaction = state.lookup(request.match_info["interaction_id"])
    del state.interactions[interaction.id]
    interaction.forget()
    return json_response({}, interaction.service_tier)


def _sse(event: Json) -> bytes:
    """One event as Google frames it: its type on an ``event:`` line, then its data."""
    data = json.dumps(event, separators=(",", ":")).encode()
    return b"event: " + str(event["event_type"]).encode() + b"\ndata: " + data + b"\n\n"


# How Google's streams end, after the last event.
_DONE: Final = b"event: done\ndata: [DONE]\n\n"


async def _stream_interaction(
    request: web.Request,
    interaction: EmulatedInteraction,
    usage_mode: UsageMode,
    *,
    after_event: str | None,
) -> web.StreamResponse:
    """Send an interaction's events, following it until it ends, then ``event: done``."""
    position = 0
    if after_event is not None:
        ids = [event["event_id"] for event in interaction.events(usage_mode=usage_mode)]
        if after_event not in ids:
            raise ApiError(400, f"Unknown last_event_id {after_event!r}.")
        position = ids.index(after_event) + 1
    delay = chunk_delay(request)
    budget = cut_after(request)
    response = await start_stream(request, "text/event-stream", interaction.service_tier)
    try:
        sent = 0
        while True:
            now = time.monotonic()
            events = interaction.events(usage_mode=usage_mode, now=now)
            if interaction.deleted:
                error = {"code": "not_found", "message": "The interaction was deleted."}
                await response.write(_sse({"event_type": "error", "error": error}))
                break
            for event in events[position:]:
                if budget is not None and sent >= budget:
                    drop_connection(request)
                    return response
                if sent:
                    await asyncio.sleep(delay)
                sent += 1
                await response.write(_sse(event))
            position = len(events)
            if interaction.status(now) != "in_progress":
                break
            interaction.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interaction.changed.wait(), interaction.ready_at - now)
        await response.write(_DONE)
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream; there is nobody left to answer.
        pass
    return response
