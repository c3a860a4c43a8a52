"""Usage extraction from whole responses of either Gemini API.

This is where upstream JSON becomes a ``Usage`` (see ``metering.records``). Two
shapes arrive on the wire:

- the Interactions API's ``usage`` object (snake_case, ``total_*_tokens``,
  modality lists of ``{"modality", "tokens"}``, ``grounding_tool_count``);
- generateContent's ``usageMetadata`` (camelCase ``promptTokenCount`` etc.,
  modality lists of ``{"modality": "TEXT", "tokenCount"}``), which the Python
  SDK's ``to_json_dict`` spells in snake_case; both spellings are read.

Embeddings (``embedContent``, ``batchEmbedContents``) bill input only. Their
response carries an ``EmbeddingUsageMetadata`` (``promptTokenCount``,
``promptTokenDetails``) where the API fills it; where it does not (older
surfaces omit it) ``summarize_embed`` estimates the input from the request's
text, flagged ``estimated``.

``server.forward`` calls ``summarize_interaction`` / ``summarize_generate`` /
``summarize_embed`` on a whole JSON body, the stream taps in ``metering.streams``
reuse the same pieces per event or chunk, and the ``price`` CLI calls
``usage_from_any``.

The ``usage_from_*`` functions are strict: they raise ``UsageParseError`` on
a malformed usage object, because the CLI wants to say what is wrong. The
``summarize_*`` functions never raise on anything from the wire; they report
``ResponseSummary.parse_error`` instead, so one odd response can never break
the relay of a client's call.

Rules shared by both shapes:

- A missing count is 0 (Gemini omits zero-valued fields), and so is ``null``.
- A count must be a non-negative ``int``; bools, floats and strings are
  malformed. A total that is not the sum of its parts is *not* malformed:
  ``Usage.total_mismatch`` reports it.
- Modality names are lower-cased. A modality item without a ``modality``
  counts as text: proto3 JSON omits an enum at its default value, and the
  SDK documents ``MODALITY_UNSPECIFIED`` as "treated as TEXT". Repeated
  modalities are added up.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Final

import orjson

from .records import Usage

__all__ = [
    "PENDING",
    "TERMINAL",
    "GenerateAccumulator",
    "ResponseSummary",
    "UsageParseError",
    "count_code_execution_steps",
    "estimate_embed_usage",
    "nonempty_str",
    "parse_json",
    "summarize_embed",
    "summarize_generate",
    "summarize_interaction",
    "usage_due",
    "usage_from_any",
    "usage_from_embed",
    "usage_from_generate",
    "usage_from_interaction",
]

# Interaction statuses, from the SDK's ``InteractionStatus`` literal. While an
# interaction is pending its usage (if any) is a snapshot that will still grow.
PENDING: Final = frozenset({"in_progress", "queued"})
# Statuses after which the interaction's usage is final: every known status
# but the pending ones. ``requires_action`` and ``requires_continuation`` end
# this interaction's work: the client continues in a new request, which is a
# new interaction with its own usage (both SDKs bill a continuation hop by
# hop: each re-prefills its input, and they add the hops' usages up).
# ``idle`` (google-genai 3.6) succeeds ``requires_action``, which the SDK marks
# "Deprecated: Use IDLE instead"; it means "the server has completed all
# processing and background reasoning", so nothing more is generated (and
# billed) on this interaction until the client sends something new.
TERMINAL: Final = frozenset(
    {
        "completed",
        "failed",
        "cancelled",
        "incomplete",
        "budget_exceeded",
        "requires_action",
        "requires_continuation",
        "idle",
    }
)

# The grounding keys both APIs use (Interactions ``GroundingToolCountType``:
# ``google_search``, ``google_maps``, ``retrieval``); generateContent's grounding
# metadata is counted under the same keys (``GenerateAccumulator``).
GOOGLE_SEARCH: Final = "google_search"
GOOGLE_MAPS: Final = "google_maps"


class UsageParseError(ValueError):
    """A usage object that does not have the shape either API documents."""


@dataclass(slots=True)
class ResponseSummary:
    """What the meter reads off one upstream response (whole or streamed)."""

    usage: Usage | None = None
    # usage missing where it was due, or malformed, or unparseable stream data
    parse_error: bool = False
    interaction_id: str | None = None
    response_id: str | None = None
    # Interaction status (Interactions API only)
    status: str | None = None
    # model (Interactions) or modelVersion (generateContent) as the response reports it
    model: str | None = None
    # Interaction ``service_tier`` as the response reports it
    service_tier: str | None = None
    code_execution_calls: int = 0
    # code_execution_result steps with is_error true; codeExecutionResult parts
    # whose outcome is not OUTCOME_OK
    code_execution_errors: int = 0
    # usage counted by the proxy from the request, not reported by the upstream
    estimated: bool = False


def parse_json(body: bytes | bytearray | str) -> object | None:
    """The JSON value of ``body``, or ``None`` on anything that is not JSON.

    orjson reads it (every response and stream event the meter reads passes here);
    what orjson refuses goes to ``json.loads``, which reads a little more: ``NaN``,
    UTF-16 and UTF-32, integers past 64 bits. ``None`` is also what a literal
    ``null`` body gives; no caller needs to tell the two apart.
    """
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        return parsed
    try:
        # ValueError covers JSONDecodeError, undecodable bytes and ints longer
        # than the interpreter's digit limit; RecursionError absurd nesting.
        value: object = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value


def usage_due(status: str | None) -> bool:
    """Whether an Interaction with this status must carry its usage.

    Anything but a pending status, unknown statuses and a missing one
    included: better to flag a missing usage than to let it pass silently.
    """
    return status not in PENDING


# --- strict usage parsers ---------------------------------------------------------------


def _describe(value: object) -> str:
    # Error messages name the type, never the value: it came from the wire.
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"


def _as_count(value: object, where: str) -> int:
    if value is None:
        return 0
    # ``type(...) is int`` keeps bools (an int subclass) out.
    if type(value) is not int:
        raise UsageParseError(f"{where} must be a non-negative integer, not {_describe(value)}")
    if value < 0:
        raise UsageParseError(f"{where} must be a non-negative integer, not negative")
    return value


def _as_dict(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise UsageParseError(f"{where} must be a JSON object, not {_describe(value)}")
    return value


def _pick(d: dict[str, object], camel: str, snake: str) -> object:
    value = d.get(camel)
    return d.get(snake) if value is None else value


def _modality_name(value: object, where: str) -> str:
    if value is None:
        return "text"
    if not isinstance(value, str):
        raise UsageParseError(f"{where}.modality must be a string, not {_describe(value)}")
    name = value.lower()
    return "text" if name in ("", "modality_unspecified") else name


def _modalities(value: object, count_keys: tuple[str, ...], where: str) -> dict[str, int]:
    """A modality list (``[{"modality", count_key}]``) as ``{name: tokens}``."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise UsageParseError(f"{where} must be a list, not {_describe(value)}")
    out: dict[str, int] = {}
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        entry = _as_dict(item, at)
        name = _modality_name(entry.get("modality"), at)
        raw = None
        for key in count_keys:
            raw = entry.get(key)
            if raw is not None:
                break
        out[name] = out.get(name, 0) + _as_count(raw, f"{at}.{count_keys[0]}")
    return out


def _grounding(value: object, where: str) -> dict[str, int]:
    """``grounding_tool_count`` (``[{"type", "count"}]``) as ``{type: count}``."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise UsageParseError(f"{where} must be a list, not {_describe(value)}")
    out: dict[str, int] = {}
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        entry = _as_dict(item, at)
        kind = entry.get("type")
        if kind is None:
            # proto3 JSON omits an enum at its default (unspecified) value.
            kind = "unspecified"
        elif not isinstance(kind, str):
            raise UsageParseError(f"{at}.type must be a string, not {_describe(kind)}")
        out[kind] = out.get(kind, 0) + _as_count(entry.get("count"), f"{at}.count")
    return out


_INTERACTION_KEYS: Final = frozenset(
    {
        "total_input_tokens",
        "total_cached_tokens",
        "total_tool_use_tokens",
        "total_output_tokens",
        "total_thought_tokens",
        "total_tokens",
        "initial_input_tokens",
        "input_tokens_by_modality",
        "cached_tokens_by_modality",
        "tool_use_tokens_by_modality",
        "output_tokens_by_modality",
        "grounding_tool_count",
    }
)


def usage_from_interaction(obj: object) -> Usage:
    """An Interactions API ``usage`` object as a ``Usage``.

    Raises ``UsageParseError`` when it is not an object, a count is not a
    non-negative integer, or a modality/grounding list is not a list of
    objects of that shape. Unknown keys are ignored (the API grows).
    """
    d = _as_dict(obj, "usage")

    def count(key: str) -> int:
        return _as_count(d.get(key), key)

    def modalities(key: str) -> dict[str, int]:
        return _modalities(d.get(key), ("tokens",), key)

    return Usage(
        input_tokens=count("total_input_tokens"),
        cached_tokens=count("total_cached_tokens"),
        intermediate_tokens=count("total_tool_use_tokens"),
        output_tokens=count("total_output_tokens"),
        thinking_tokens=count("total_thought_tokens"),
        total_tokens=count("total_tokens"),
        input_by_modality=modalities("input_tokens_by_modality"),
        cached_by_modality=modalities("cached_tokens_by_modality"),
        intermediate_by_modality=modalities("tool_use_tokens_by_modality"),
        output_by_modality=modalities("output_tokens_by_modality"),
        grounding=_grounding(d.get("grounding_tool_count"), "grounding_tool_count"),
    )


# (camelCase on the wire, snake_case from the Python SDK's to_json_dict)
_GENERATE_COUNTS: Final = (
    ("promptTokenCount", "prompt_token_count"),
    ("cachedContentTokenCount", "cached_content_token_count"),
    ("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
    ("candidatesTokenCount", "candidates_token_count"),
    ("thoughtsTokenCount", "thoughts_token_count"),
    ("totalTokenCount", "total_token_count"),
)
_GENERATE_DETAILS: Final = (
    ("promptTokensDetails", "prompt_tokens_details"),
    ("cacheTokensDetails", "cache_tokens_details"),
    ("toolUsePromptTokensDetails", "tool_use_prompt_tokens_details"),
    ("candidatesTokensDetails", "candidates_tokens_details"),
)
_GENERATE_KEYS: Final = frozenset(
    name for pair in (*_GENERATE_COUNTS, *_GENERATE_DETAILS) for name in pair
)
_TOKEN_COUNT_KEYS: Final = ("tokenCount", "token_count")


def usage_from_generate(obj: object) -> Usage:
    """A generateContent ``usageMetadata`` object as a ``Usage``.

    Accepts the wire's camelCase and the Python SDK's snake_case. Grounding is
    not part of ``usageMetadata`` (it is in the candidates), so ``grounding``
    is empty here; ``summarize_generate`` fills it. Raises ``UsageParseError``
    like ``usage_from_interaction``.
    """
    return usage_metadata(obj, _GENERATE_COUNTS, _GENERATE_DETAILS)


Names = tuple[tuple[str, str], ...]


def usage_metadata(obj: object, counts: Names, details: Names) -> Usage:
    """A ``usageMetadata``-shaped object as a ``Usage``, given the (camelCase, snake_case)
    names of its six counts (input, cached, intermediate, output, thinking, total) and of
    its four modality breakdowns; ``UsageParseError`` if malformed."""
    d = _as_dict(obj, "usageMetadata")
    # Plain loops (every metered response comes here): ``_pick`` inlined, no closures.
    n: list[int] = []
    for camel, snake in counts:
        value = d.get(camel)
        n.append(_as_count(d.get(snake) if value is None else value, camel))
    m: list[dict[str, int]] = []
    for camel, snake in details:
        value = d.get(camel)
        m.append(_modalities(d.get(snake) if value is None else value, _TOKEN_COUNT_KEYS, camel))
    return Usage(
        input_tokens=n[0],
        cached_tokens=n[1],
        intermediate_tokens=n[2],
        output_tokens=n[3],
        thinking_tokens=n[4],
        total_tokens=n[5],
        input_by_modality=m[0],
        cached_by_modality=m[1],
        intermediate_by_modality=m[2],
        output_by_modality=m[3],
    )


def usage_from_any(obj: object) -> Usage:
    """A usage object of either API, told apart by its keys (for the ``price`` CLI).

    Also accepts a whole response wrapping one: an Interaction (``usage``), a
    GenerateContentResponse (``usageMetadata``, whose candidates' search
    queries then fill ``grounding``) or an embeddings response (``embedding``
    or ``embeddings`` beside its ``usageMetadata``). An embeddings usage is
    told by its ``promptTokenDetails`` spelling. An empty object is an
    all-zero usage. Raises ``UsageParseError`` when the shape is neither or both.
    """
    d = _as_dict(obj, "usage")
    keys = d.keys()
    interaction = not _INTERACTION_KEYS.isdisjoint(keys)
    generate = not _GENERATE_KEYS.isdisjoint(keys)
    if interaction and generate:
        raise UsageParseError("usage mixes Interactions and generateContent fields")
    if interaction:
        return usage_from_interaction(d)
    if "promptTokenDetails" in keys or "prompt_token_details" in keys:
        return usage_from_embed(d)
    if generate:
        return usage_from_generate(d)
    metadata = _pick(d, "usageMetadata", "usage_metadata")
    if metadata is not None and ("embedding" in keys or "embeddings" in keys):
        return usage_from_embed(metadata)
    if metadata is not None:
        usage = usage_from_generate(metadata)
        acc = GenerateAccumulator()
        acc.add(d)
        grounding = acc.grounding()
        return replace(usage, grounding=grounding) if grounding else usage
    if "usage" in d:
        return usage_from_interaction(d["usage"])
    if not d:
        return Usage()
    raise UsageParseError("not a usage object of the Interactions or generateContent API")


# --- response summaries (never raise) -----------------------------------------------------


def nonempty_str(value: object) -> str | None:
    """``value`` if it is a non-empty string, else ``None`` (ids, statuses, names)."""
    return value if isinstance(value, str) and value else None


def count_code_execution_steps(steps: object) -> tuple[int, int]:
    """(calls, errors) over an Interaction's ``steps`` list; anything else is (0, 0)."""
    calls = errors = 0
    if isinstance(steps, list):
        for step in steps:
            if not isinstance(step, dict):
                continue
            kind = step.get("type")
            if kind == "code_execution_call":
                calls += 1
            elif kind == "code_execution_result" and step.get("is_error") is True:
                errors += 1
    return calls, errors


def summarize_interaction(obj: object) -> ResponseSummary:
    """Read an Interaction resource (a create or get response body).

    The usage is required once the status is terminal (see ``usage_due``);
    its absence, or a malformed one, sets ``parse_error``. A pending
    interaction's usage, if present, is reported as the snapshot it is.
    """
    summary = ResponseSummary()
    if not isinstance(obj, dict):
        summary.parse_error = True
        return summary
    summary.interaction_id = nonempty_str(obj.get("id"))
    summary.status = nonempty_str(obj.get("status"))
    summary.model = nonempty_str(obj.get("model"))
    summary.service_tier = nonempty_str(obj.get("service_tier"))
    calls, errors = count_code_execution_steps(obj.get("steps"))
    summary.code_execution_calls = calls
    summary.code_execution_errors = errors
    raw = obj.get("usage")
    if raw is None:
        summary.parse_error = usage_due(summary.status)
    else:
        try:
            summary.usage = usage_from_interaction(raw)
        except UsageParseError:
            summary.parse_error = True
    return summary


def _is_ok_outcome(outcome: object) -> bool:
    # The SDK's Outcome enum is case-insensitive; a missing outcome is
    # OUTCOME_UNSPECIFIED (omitted by proto3 JSON), which is not a success.
    return isinstance(outcome, str) and outcome.upper() == "OUTCOME_OK"


# (camelCase, snake_case) of the query lists generateContent reports per candidate
_QUERY_FIELDS: Final = (
    ("webSearchQueries", "web_search_queries"),
    ("imageSearchQueries", "image_search_queries"),
)


class _CandidateGrounding:
    """One candidate's grounding metadata, folded over a response or a stream.

    Streams send each grounding chunk once ("only contains the grounding chunks that
    have not been included in the grounding metadata of previous responses", the
    ``GroundingMetadata`` reference), so what a candidate's chunks showed is the union
    of what every chunk showed.
    """

    __slots__ = ("maps_sources", "maps_widget", "queries", "web_sources")

    def __init__(self) -> None:
        self.queries: dict[str, set[str]] = {}
        self.maps_sources = False
        self.maps_widget = False
        self.web_sources = False

    def add(self, metadata: dict[str, object]) -> None:
        for camel, snake in _QUERY_FIELDS:
            listed = _pick(metadata, camel, snake)
            if isinstance(listed, list):
                found = {q for q in listed if isinstance(q, str) and q.strip()}
                if found:
                    self.queries.setdefault(camel, set()).update(found)
        chunks = _pick(metadata, "groundingChunks", "grounding_chunks")
        if isinstance(chunks, list):
            for chunk in chunks:
                if isinstance(chunk, dict):
                    self.maps_sources |= isinstance(chunk.get("maps"), dict)
                    self.web_sources |= isinstance(chunk.get("web"), dict)
        token = _pick(metadata, "googleMapsWidgetContextToken", "google_maps_widget_context_token")
        self.maps_widget |= nonempty_str(token) is not None

    def uses(self) -> dict[str, int]:
        uses: dict[str, int] = {}
        maps_only = (self.maps_sources or self.maps_widget) and not self.web_sources
        searches = 0 if maps_only else sum(len(q) for q in self.queries.values())
        if searches:
            uses[GOOGLE_SEARCH] = searches
        if self.maps_sources:
            uses[GOOGLE_MAPS] = 1
        return uses


class GenerateAccumulator:
    """Folds GenerateContentResponse objects into one ``ResponseSummary``.

    A whole response is one object; a stream is a sequence of chunks, each a
    GenerateContentResponse carrying *new* parts and, usually, a cumulative
    ``usageMetadata``. So: the last usage wins (it is only parsed once, in
    ``summary``), code-execution parts add up, ids and model version take the
    last value seen.

    Grounding is reported in ``candidates[].groundingMetadata``, not in
    ``usageMetadata``, and is counted the way Google bills it:

    - Google Search: ``webSearchQueries`` (and ``imageSearchQueries`` for image
      search), counted under ``"google_search"`` like the Interactions API's
      ``grounding_tool_count``. Google's grounding documentation: Gemini 3 bills
      "each search query", and "for billing purposes, we ignore the empty web
      search queries when counting unique queries" (quoted on Google's developer
      forum, thread 168136, read 2026-11-29). So each candidate's queries count
      once per distinct non-empty string (a blank one, all spaces, is taken as
      empty: no search can run on it), whether a stream repeats a candidate's
      metadata in later chunks or spreads it over them; candidates (each its own
      generation) add up. Gemini 2.5 bills per grounded prompt instead: the
      catalog's ``unit`` turns any count into one charge.
    - Google Maps: a candidate whose ``groundingChunks`` hold a ``maps`` source is
      one Maps-grounded prompt, counted under ``"google_maps"``. Google's Maps page
      (ai.google.dev/gemini-api/docs/maps-grounding, "Pricing and rate limits",
      captures of 2026-05-05 and 2026-09-28): "$25 / 1K grounded prompts", "a
      request is only counted ... when a prompt successfully returns at least one
      Google Maps grounded result (i.e., results containing at least one Google
      Maps source)", and several Maps queries in one request count as one. Google's
      own example response of that page also lists ``webSearchQueries``
      (``["restaurants near me"]``) beside its Maps sources: those are the queries
      the Maps tool ran, so a candidate whose metadata is Maps-only (Maps sources or
      ``googleMapsWidgetContextToken``, and no ``web`` source) does not count them as
      Google Search. A candidate with both web and Maps sources used both tools; its
      queries cannot be told apart and count as Search (an upper bound).
    """

    __slots__ = (
        "_garbage",
        "_grounding",
        "_model",
        "_response_id",
        "_usage",
        "calls",
        "errors",
    )

    def __init__(self) -> None:
        self._usage: object = None
        self._response_id: str | None = None
        self._model: str | None = None
        self._garbage = False
        # candidate index -> what its grounding metadata showed so far
        self._grounding: dict[int, _CandidateGrounding] = {}
        self.calls = 0
        self.errors = 0

    def add(self, obj: object) -> None:
        """Fold in one response object; a non-object marks the result unparseable."""
        if not isinstance(obj, dict):
            self._garbage = True
            return
        usage = _pick(obj, "usageMetadata", "usage_metadata")
        if usage is not None:
            self._usage = usage
        response_id = nonempty_str(_pick(obj, "responseId", "response_id"))
        if response_id is not None:
            self._response_id = response_id
        model = nonempty_str(_pick(obj, "modelVersion", "model_version"))
        if model is not None:
            self._model = model
        candidates = obj.get("candidates")
        if isinstance(candidates, list):
            for candidate in candidates:
                if isinstance(candidate, dict):
                    self._add_candidate(candidate)

    def _add_candidate(self, candidate: dict[str, object]) -> None:
        content = candidate.get("content")
        if isinstance(content, dict):
            parts = content.get("parts")
            if isinstance(parts, list):
                for part in parts:
                    if not isinstance(part, dict):
                        continue
                    if _pick(part, "executableCode", "executable_code") is not None:
                        self.calls += 1
                    result = _pick(part, "codeExecutionResult", "code_execution_result")
                    if isinstance(result, dict) and not _is_ok_outcome(result.get("outcome")):
                        self.errors += 1
        grounding = _pick(candidate, "groundingMetadata", "grounding_metadata")
        if isinstance(grounding, dict):
            index = candidate.get("index")
            # proto3 JSON omits index 0.
            key_index = index if type(index) is int else 0
            seen = self._grounding.get(key_index)
            if seen is None:
                seen = self._grounding[key_index] = _CandidateGrounding()
            seen.add(grounding)

    def mark_garbage(self) -> None:
        """Record that part of the response could not be decoded."""
        self._garbage = True

    def grounding(self) -> dict[str, int]:
        """Grounding uses seen so far, keyed like the Interactions API's."""
        if not self._grounding:
            return {}  # most responses: no grounding metadata
        uses: Counter[str] = Counter()
        for candidate in self._grounding.values():
            uses.update(candidate.uses())
        return dict(uses)

    def summary(self) -> ResponseSummary:
        """The summary of everything folded in so far."""
        summary = ResponseSummary(
            response_id=self._response_id,
            model=self._model,
            code_execution_calls=self.calls,
            code_execution_errors=self.errors,
            parse_error=self._garbage,
        )
        if self._usage is None:
            summary.parse_error = True
            return summary
        try:
            usage = usage_from_generate(self._usage)
        except UsageParseError:
            summary.parse_error = True
            return summary
        grounding = self.grounding()
        summary.usage = replace(usage, grounding=grounding) if grounding else usage
        return summary


def summarize_generate(obj: object) -> ResponseSummary:
    """Read a GenerateContentResponse (a generateContent response body).

    ``usageMetadata`` is always due: its absence, or a malformed one, sets
    ``parse_error``.
    """
    acc = GenerateAccumulator()
    acc.add(obj)
    return acc.summary()


# --- embeddings ---------------------------------------------------------------------------

# Google: "For Gemini models, a token is equivalent to about 4 characters. 100 tokens is
# equal to about 60-80 English words." (ai.google.dev/gemini-api/docs/tokens). The
# estimate rounds up per text part, so a non-empty part is never free.
CHARS_PER_TOKEN: Final = 4

# Vertex AI and the SDK's UsageMetadata spell the modality list ``promptTokensDetails``;
# the Developer API's EmbeddingUsageMetadata spells it ``promptTokenDetails``.
_EMBED_DETAILS: Final = (
    ("promptTokenDetails", "prompt_token_details"),
    ("promptTokensDetails", "prompt_tokens_details"),
)


def usage_from_embed(obj: object) -> Usage:
    """An embeddings response's ``usageMetadata`` as a ``Usage`` (input only).

    The Developer API's ``EmbeddingUsageMetadata`` has ``promptTokenCount`` and
    ``promptTokenDetails`` (``[{"modality", "tokenCount"}]``); Vertex AI's
    spelling and snake_case are read too. ``total_tokens`` is
    ``totalTokenCount`` if given, else the prompt count: embeddings have no
    output. Raises ``UsageParseError`` like the other strict parsers.
    """
    d = _as_dict(obj, "usageMetadata")
    tokens = _as_count(_pick(d, "promptTokenCount", "prompt_token_count"), "promptTokenCount")
    details: object = None
    for camel, snake in _EMBED_DETAILS:
        details = _pick(d, camel, snake)
        if details is not None:
            break
    by_modality = _modalities(details, _TOKEN_COUNT_KEYS, "promptTokenDetails")
    total = _pick(d, "totalTokenCount", "total_token_count")
    return Usage(
        input_tokens=tokens,
        total_tokens=tokens if total is None else _as_count(total, "totalTokenCount"),
        input_by_modality=by_modality,
    )


def _text_part_tokens(content: object) -> int:
    """``ceil(len / CHARS_PER_TOKEN)`` summed over a Content's text parts."""
    if not isinstance(content, dict):
        return 0
    parts = content.get("parts")
    if not isinstance(parts, list):
        return 0
    tokens = 0
    for part in parts:
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str):
            tokens += (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN  # rounded up
    return tokens


def estimate_embed_usage(request: object) -> Usage | None:
    """The input tokens of an embedContent or batchEmbedContents request, estimated.

    Counts ``ceil(characters / 4)`` per text part of ``content`` (embedContent)
    or of every ``requests[].content`` (batchEmbedContents): Google documents
    about 4 characters per token, and that "only the ``parts.text`` fields
    will be counted" for an embedding request. Media parts are not estimated
    (their size is not known without decoding them), so an estimate for a
    multimodal request is a lower bound. ``None`` when the body holds no
    content of either shape (nothing to count from).
    """
    if not isinstance(request, dict):
        return None
    if "requests" in request:
        items = request["requests"]
        if not isinstance(items, list):
            return None
        contents = [item.get("content") for item in items if isinstance(item, dict)]
    elif "content" in request:
        contents = [request["content"]]
    else:
        return None
    tokens = sum(_text_part_tokens(content) for content in contents)
    return Usage(
        input_tokens=tokens,
        total_tokens=tokens,
        input_by_modality={"text": tokens} if tokens else {},
    )


def summarize_embed(response: object, request: object) -> ResponseSummary:
    """Read an embedContent / batchEmbedContents response, given the request it answers.

    The response's usage wins when it reports ``promptTokenCount``. Without
    one the tokens are estimated from the request (``estimated``); a
    malformed usage, or a body that is not a JSON object, is also flagged
    ``parse_error`` and estimated. Only when neither usage nor the request's
    content can be read is the usage left out (``parse_error``).
    """
    summary = ResponseSummary()
    if not isinstance(response, dict):
        summary.parse_error = True
    else:
        raw = _pick(response, "usageMetadata", "usage_metadata")
        if isinstance(raw, dict) and _pick(raw, "promptTokenCount", "prompt_token_count") is None:
            raw = None  # no count in it: as good as missing
        if raw is not None:
            try:
                summary.usage = usage_from_embed(raw)
                return summary
            except UsageParseError:
                summary.parse_error = True
    return with_estimate(summary, estimate_embed_usage(request))


def with_estimate(summary: ResponseSummary, estimate: Usage | None) -> ResponseSummary:
    """``summary`` with the proxy's own count of the request when the response carried
    no usable one: flagged ``estimated``, or ``parse_error`` when nothing could be counted."""
    if estimate is None:
        summary.parse_error = True
    else:
        summary.usage = estimate
        summary.estimated = True
    return summary
