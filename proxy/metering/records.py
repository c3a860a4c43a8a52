"""The shapes that flow from a finished call to storage: usage, cost, record.

``Usage`` is what a parser reads off one upstream response (either API's
shape, already normalised to Gemini's billing categories); ``Cost`` is what the
pricing engine makes of it; ``UsageRecord`` is everything stored about one
billable call. They are plain dataclasses so parsers, pricing and the writer
stay pure and testable without a socket or a database.

Token categories (see README, "Token categories"):

- ``input_tokens``: the whole prompt, cached part included
  (Interactions ``total_input_tokens``; generateContent ``promptTokenCount``).
- ``cached_tokens``: the cached part of the prompt, a subset of input
  (``total_cached_tokens`` / ``cachedContentTokenCount``).
- ``intermediate_tokens``: tool-use tokens of code execution and other tools,
  billed as input (``total_tool_use_tokens`` / ``toolUsePromptTokenCount``).
- ``output_tokens``: generated output, billed as output
  (``total_output_tokens`` / ``candidatesTokenCount``).
- ``thinking_tokens``: thoughts, billed at the output rate
  (``total_thought_tokens`` / ``thoughtsTokenCount``).
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

# --- request ids ------------------------------------------------------------------------
#
# A record's ``request_id`` is its idempotency key in the database, so it must never repeat
# across processes, restarts or forks. 80 random bits chosen once per process, then a
# counter: as unique as a uuid4 (32 hex digits too) without reading the system's randomness
# on every call, which cost 2% of the proxy's CPU per call.
_id_prefix = secrets.token_hex(10)
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(10), itertools.count()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique to this process and call."""
    return f"{_id_prefix}{next(_id_counter):012x}"


class EndpointKind(StrEnum):
    """Which billable endpoint a call went to; stored on every record."""

    INTERACTION_CREATE = "interaction.create"
    INTERACTION_GET = "interaction.get"
    GENERATE_CONTENT = "generate_content"
    STREAM_GENERATE_CONTENT = "stream_generate_content"
    EMBED_CONTENT = "embed_content"
    # the synchronous batch of embedContent requests, not the Batch API
    BATCH_EMBED_CONTENTS = "batch_embed_contents"
    # Routes Google bills that the meter does not understand yet: recorded with zero
    # tokens and ``unmetered_route`` (the table is ``server.routes.UNMETERED_ROUTES``).
    BATCH_GENERATE_CONTENT = "batch_generate_content"
    ASYNC_BATCH_EMBED_CONTENT = "async_batch_embed_content"
    BATCH_GET = "batch.get"
    CACHED_CONTENT_CREATE = "cached_content.create"
    CACHED_CONTENT_UPDATE = "cached_content.update"
    PREDICT = "predict"
    PREDICT_LONG_RUNNING = "predict_long_running"
    OPERATION_GET = "operation.get"
    FILE_SEARCH_IMPORT = "file_search.import"
    AUTH_TOKEN_CREATE = "auth_token.create"
    OPENAI_CHAT_COMPLETIONS = "openai.chat_completions"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_IMAGES = "openai.images"
    OPENAI_OTHER = "openai.other"
    # Passthrough mode: a write (any method but GET, HEAD, OPTIONS) on a route the proxy does
    # not know (``server.routes.UNLISTED_WRITE``), recorded like an unmetered route's call. One
    # value for all of them: the path is never a label, so the metric's ``route`` stays bounded.
    UNLISTED = "unlisted"
    # One result of a Batch API job, billed at the batch rate to the batch's owner.
    BATCH_RESULT = "batch.result"
    # The storage refunded for a context cache deleted before it expired.
    CACHED_CONTENT_DELETE = "cached_content.delete"
    # One Live API (WebSocket) session.
    LIVE_SESSION = "live.session"


@dataclass(frozen=True, slots=True)
class Usage:
    """One response's token counts, split the way Gemini bills them.

    Modality maps use lower-case modality names (``text``, ``image``,
    ``audio``, ``video``, ``document``) whichever API they came from.
    """

    input_tokens: int = 0
    cached_tokens: int = 0
    intermediate_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    total_tokens: int = 0
    input_by_modality: dict[str, int] = field(default_factory=dict)
    cached_by_modality: dict[str, int] = field(default_factory=dict)
    intermediate_by_modality: dict[str, int] = field(default_factory=dict)
    output_by_modality: dict[str, int] = field(default_factory=dict)
    # grounding tool type (e.g. "google_search") -> number of uses
    grounding: dict[str, int] = field(default_factory=dict)
    # Units billed other than by the token: images generated (Imagen, per image),
    # seconds of video generated (Veo, per second, summed over the videos), and a
    # context cache's storage as cached tokens x seconds (negative for a refund).
    images: int = 0
    video_seconds: int = 0
    storage_token_seconds: int = 0
    # ``video_seconds`` by output resolution ("720p", "1080p", "4k"), for models that
    # price resolutions apart; seconds it does not account for bill at the base rate.
    video_seconds_by_resolution: dict[str, int] = field(default_factory=dict)

    @property
    def total_mismatch(self) -> bool:
        """True when the reported total is not the sum of the billed parts."""
        return self.total_tokens != (
            self.input_tokens + self.intermediate_tokens + self.output_tokens + self.thinking_tokens
        )

    def modalities_json(self) -> dict[str, dict[str, int]]:
        """The per-modality counts as stored in the record's JSON column (with the
        video seconds by resolution, the same kind of breakdown of a billed unit)."""
        return {
            name: counts
            for name, counts in (
                ("input", self.input_by_modality),
                ("cached", self.cached_by_modality),
                ("intermediate", self.intermediate_by_modality),
                ("output", self.output_by_modality),
                ("video_seconds", self.video_seconds_by_resolution),
            )
            if counts
        }


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one ``Usage``, exact decimals in US dollars.

    ``total`` is the sum of the split; ``None`` everywhere (and ``unpriced``)
    when the model has no catalog entry: never a guessed price.
    """

    total: Decimal | None
    input: Decimal | None = None
    cached: Decimal | None = None
    intermediate: Decimal | None = None
    output: Decimal | None = None
    thinking: Decimal | None = None
    grounding: Decimal | None = None
    # per image and per second of video
    media: Decimal | None = None
    # context-cache storage (negative for a refund)
    storage: Decimal | None = None
    catalog_version: str | None = None

    @property
    def unpriced(self) -> bool:
        return self.total is None


UNPRICED = Cost(total=None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call is billed to, as resolved from the key it presented."""

    user_id: int
    user_name: str
    team_id: int | None = None
    team_name: str | None = None
    key_id: int | None = None


@dataclass(slots=True)
class UsageRecord:
    """Everything stored about one billable upstream response."""

    request_id: str
    created_at: datetime
    principal: Principal
    model: str | None
    endpoint: EndpointKind
    streamed: bool
    upstream_status: int
    latency_seconds: float
    ttfb_seconds: float | None
    usage: Usage = field(default_factory=Usage)
    interaction_id: str | None = None
    # The upstream resource the line belongs to (a batch, a context cache, a video
    # operation, a Live session), when it is not an interaction.
    resource: str | None = None
    response_id: str | None = None
    previous_interaction_id: str | None = None
    requested_service_tier: str | None = None
    effective_service_tier: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    code_execution_calls: int = 0
    code_execution_errors: int = 0
    # usage missing or malformed in a response that should have carried it
    parse_error: bool = False
    client_disconnected: bool = False
    # the partial usage of an interaction cut before it was terminal; the terminal
    # usage seen later replaces it
    provisional: bool = False
    # tokens counted by the proxy (the response carried no usage)
    estimated: bool = False
    # a billable route the meter does not understand yet: zero tokens, still recorded
    unmetered_route: bool = False
    cost: Cost = UNPRICED
    # Not stored: the part of ``latency_seconds`` spent waiting on the upstream, for
    # the proxy-overhead metric (None when not measured).
    upstream_seconds: float | None = None
