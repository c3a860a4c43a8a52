"""Usage of a Live API session, read off the frames the relay forwards.

``server.live`` relays a ``BidiGenerateContent`` WebSocket frame by frame; it
hands the client's first frame to ``setup_model`` (the session's model) and
every upstream frame to a ``LiveMeter``, which folds the ``usageMetadata`` the
server sends into one ``Usage`` for the session's record. Nothing here does
I/O, and nothing raises on what came off the wire: an odd frame is counted in
``LiveMeter.parse_errors`` and the session is recorded flagged ``parse_error``.

How the figures accumulate (the question that decides double counting)
-----------------------------------------------------------------------

A server message (``LiveServerMessage`` in google-genai 3.6.1 ``types.py``)
may carry ``usageMetadata`` (SDK ``UsageMetadata``: ``promptTokenCount``,
``cachedContentTokenCount``, ``responseTokenCount``,
``toolUsePromptTokenCount``, ``thoughtsTokenCount``, ``totalTokenCount`` and
the ``promptTokensDetails`` / ``cacheTokensDetails`` /
``responseTokensDetails`` / ``toolUsePromptTokensDetails`` modality lists).
Each such message reports one model turn, and its ``promptTokenCount`` is the
whole context window the turn was generated from: it grows turn after turn
because the history is processed, and billed, again on every turn. So the
session's bill is the *sum* of the messages' figures, and taking only the last
(or the largest) message would undercount. Sources, read 2026-11-29:

- Google's Live API best practices, "Pricing and billing"
  (https://ai.google.dev/gemini-api/docs/live-api/best-practices#pricing-billing), as
  quoted by its author on https://discuss.ai.google.dev/t/pricing-of-speech-to-speech-live-model/140340:
  "re-billing applies to all tokens, including raw audio from previous turns ...
  You are billed for these accumulated audio tokens at the standard audio input
  token rate on every single turn", and "Gemini bills strictly by the token".
- https://discuss.ai.google.dev/t/does-gemini-live-native-audio-bill-cumulative-prompt-tokens-on-every-turn-cost-seems-to-scale-with-turn-count-not-call-duration/173248:
  re-pricing real sessions three ways against the actual bill, only "sum every
  per-turn snapshot" (one per ``usageMetadata`` message) matched (within ~3%);
  the final snapshot alone was ~8.6x too low.
- googleapis/python-genai issue 1917: ``promptTokenCount`` "continues to grow
  across turns" within one session.

The proxy therefore adds up every ``usageMetadata`` message it relays, each
counted exactly once (a frame is fed once). Audio and video are priced at their
modality rates from the modality lists; ``responseTokenCount`` is the output.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Any, Final

from .parsers import (
    UsageParseError,
    _pick,
    nonempty_str,
    usage_metadata,
)
from .records import Usage

__all__ = ["LiveMeter", "add_usage", "model_name", "setup_model", "usage_from_live"]

# (camelCase on the wire, snake_case as the SDK's to_json_dict spells it)
_LIVE_COUNTS: Final = (
    ("promptTokenCount", "prompt_token_count"),
    ("cachedContentTokenCount", "cached_content_token_count"),
    ("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
    ("responseTokenCount", "response_token_count"),
    ("thoughtsTokenCount", "thoughts_token_count"),
    ("totalTokenCount", "total_token_count"),
)
_LIVE_DETAILS: Final = (
    ("promptTokensDetails", "prompt_tokens_details"),
    ("cacheTokensDetails", "cache_tokens_details"),
    ("toolUsePromptTokensDetails", "tool_use_prompt_tokens_details"),
    ("responseTokensDetails", "response_tokens_details"),
)
# A cheap test before parsing a frame: most frames are audio chunks without usage.
_USAGE_MARKERS: Final = (b"usageMetadata", b"usage_metadata")
# What the model sends within a turn (LiveServerContent.model_turn, LiveServerToolCall).
_TURN_MARKERS: Final = (b"modelTurn", b"model_turn", b"toolCall", b"tool_call")


def usage_from_live(obj: object) -> Usage:
    """A Live API ``usageMetadata`` object as a ``Usage``; ``UsageParseError`` if malformed."""
    return usage_metadata(obj, _LIVE_COUNTS, _LIVE_DETAILS)


def add_usage(a: Usage, b: Usage) -> Usage:
    """Field by field sum of two usages: counts add, per-key maps add per key."""
    changes: dict[str, Any] = {}
    for f in fields(Usage):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            merged = dict(x)
            for key, value in y.items():
                merged[key] = merged.get(key, 0) + value
            changes[f.name] = merged
        else:
            changes[f.name] = x + y
    return replace(a, **changes)


def _json_object(frame: str | bytes) -> dict[str, object] | None:
    try:
        value = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def setup_model(frame: str | bytes) -> str | None:
    """The model a client's first frame (``{"setup": {"model": "models/..."}}``) names.

    Returned without its ``models/`` prefix, as the catalog names models; None
    when the frame is not a setup message naming one.
    """
    message = _json_object(frame)
    if message is None:
        return None
    setup = message.get("setup")
    return model_name(setup.get("model")) if isinstance(setup, dict) else None


def model_name(value: object) -> str | None:
    """A ``models/...`` name as the catalog spells it (prefix dropped); None if not a name."""
    model = nonempty_str(value)
    return None if model is None else model.removeprefix("models/")


class LiveMeter:
    """Folds a session's server frames into its ``Usage`` (see the module docstring).

    ``turn_open`` says whether the model is in a turn whose usage has not come
    yet (content or a tool call seen since the last ``usageMetadata``): when a
    client vanishes then, the relay reads on until that usage arrives, since
    the upstream bills the turn whether or not anyone is listening.
    """

    __slots__ = ("parse_errors", "reports", "turn_open", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        # usageMetadata messages folded in (each one model turn's bill)
        self.reports = 0
        # frames that carried a usageMetadata the meter could not read
        self.parse_errors = 0
        self.turn_open = False

    def feed(self, frame: str | bytes) -> bool:
        """Fold in one frame from the upstream; True when it carried usage."""
        raw = frame.encode() if isinstance(frame, str) else frame
        metadata = None
        if any(marker in raw for marker in _USAGE_MARKERS):
            message = _json_object(raw)
            if message is None:
                # The marker was there: a usage that cannot be read is flagged, not guessed.
                self.parse_errors += 1
                return False
            metadata = _pick(message, "usageMetadata", "usage_metadata")
        if metadata is None:
            if any(marker in raw for marker in _TURN_MARKERS):
                self.turn_open = True
            return False
        self.turn_open = False
        try:
            usage = usage_from_live(metadata)
        except UsageParseError:
            self.parse_errors += 1
            return False
        self.usage = add_usage(self.usage, usage)
        self.reports += 1
        return True
