"""Deterministic token accounting: the same request always reports the same usage.

- Text is ``ceil(characters / 4)`` tokens, counted over all the text of the
  input (system instruction included). A media block is a fixed count:
  image 258 (``IMAGE_TOKENS``), audio 160, video 1290, document 516, reported
  under its modality.
- total = input + tool use + output + thought.

``Usage`` holds one response's counts by billing category and modality;
``interaction_usage`` and ``usage_metadata`` put them on the wire in the
Interactions API's and generateContent's shapes (or leave them out, or
malform them, as the ``x-emulator-usage`` trigger asks).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from .wire import Json

IMAGE_TOKENS: Final = 258


AUDIO_TOKENS: Final = 160


VIDEO_TOKENS: Final = 1290


DOCUMENT_TOKENS: Final = 516


MEDIA_TOKENS: Final[Mapping[str, int]] = {
    "image": IMAGE_TOKENS,
    "audio": AUDIO_TOKENS,
    "video": VIDEO_TOKENS,
    "document": DOCUMENT_TOKENS,
}


# Report order of modalities, and the only names either API uses.
MODALITIES: Final = ("text", "image", "audio", "video", "document")


Tokens = dict[str, int]  # lower-case modality -> tokens


# ``x-emulator-usage``: None when not sent (the route's default: usage sent, but for the
# OpenAI-compatible image route), "present" to ask for it where it is not the default.
UsageMode = Literal["present", "missing", "malformed"] | None


def text_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def add_tokens(*parts: Mapping[str, int]) -> Tokens:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return {name: total[name] for name in MODALITIES if total[name]}


def sum_tokens(tokens: Mapping[str, int]) -> int:
    return sum(tokens.values())


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response or one part of it, by billing category."""

    input: Mapping[str, int] = field(default_factory=dict)  # cached included
    cached: Mapping[str, int] = field(default_factory=dict)
    tool_use: Mapping[str, int] = field(default_factory=dict)
    output: Mapping[str, int] = field(default_factory=dict)
    thought: int = 0
    searches: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input=add_tokens(self.input, other.input),
            cached=add_tokens(self.cached, other.cached),
            tool_use=add_tokens(self.tool_use, other.tool_use),
            output=add_tokens(self.output, other.output),
            thought=self.thought + other.thought,
            searches=self.searches + other.searches,
        )

    @property
    def total(self) -> int:
        return (
            sum_tokens(self.input)
            + sum_tokens(self.tool_use)
            + sum_tokens(self.output)
            + self.thought
        )


@dataclass
class Tally:
    """Input as it is counted: text characters and media blocks by modality."""

    chars: int = 0
    media: Counter[str] = field(default_factory=Counter)

    def text(self, value: object) -> None:
        if isinstance(value, str):
            self.chars += len(value)

    def tokens(self) -> Tokens:
        return add_tokens(
            {"text": text_tokens(self.chars)},
            {name: count * MEDIA_TOKENS[name] for name, count in self.media.items()},
        )


def modality_of_mime(mime_type: object) -> str:
    mime = mime_type.lower() if isinstance(mime_type, str) else ""
    for prefix in ("image", "audio", "video"):
        if mime.startswith(prefix + "/"):
            return prefix
    return "document"


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
    return [{"modality": name, "tokens": tokens[name]} for name in MODALITIES if tokens.get(name)]


def interaction_usage(usage: Usage) -> Json:
    body: Json = {
        "total_input_tokens": sum_tokens(usage.input),
        "total_cached_tokens": sum_tokens(usage.cached),
        "total_tool_use_tokens": sum_tokens(usage.tool_use),
        "total_output_tokens": sum_tokens(usage.output),
        "total_thought_tokens": usage.thought,
        "total_tokens": usage.total,
        # No continuation hops here, so the first turn's input is all of it.
        "initial_input_tokens": sum_tokens(usage.input),
        "input_tokens_by_modality": _by_modality(usage.input),
        "cached_tokens_by_modality": _by_modality(usage.cached),
        "tool_use_tokens_by_modality": _by_modality(usage.tool_use),
        "output_tokens_by_modality": _by_modality(usage.output),
    }
    if usage.searches:
        body["grounding_tool_count"] = [{"type": "google_search", "count": usage.searches}]
    return body


def put_interaction_usage(target: Json, usage: Usage, mode: UsageMode, key: str = "usage") -> None:
    if mode == "missing":
        return
    if mode == "malformed":
        target[key] = dict(_MALFORMED_INTERACTION_USAGE)
    else:
        target[key] = interaction_usage(usage)


def _details(tokens: Mapping[str, int]) -> list[Json]:
    return [
        {"modality": name.upper(), "tokenCount": tokens[name]}
        for name in MODALITIES
        if tokens.get(name)
    ]


def usage_metadata(usage: Usage) -> Json:
    """generateContent's ``usageMetadata``: optional counts appear only when non-zero."""
    body: Json = {
        "promptTokenCount": sum_tokens(usage.input),
        "candidatesTokenCount": sum_tokens(usage.output),
        "totalTokenCount": usage.total,
    }
    if usage.cached:
        body["cachedContentTokenCount"] = sum_tokens(usage.cached)
    body["promptTokensDetails"] = _details(usage.input)
    if usage.cached:
        body["cacheTokensDetails"] = _details(usage.cached)
    if usage.output:
        body["candidatesTokensDetails"] = _details(usage.output)
    if usage.tool_use:
        body["toolUsePromptTokenCount"] = sum_tokens(usage.tool_use)
        body["toolUsePromptTokensDetails"] = _details(usage.tool_use)
    if usage.thought:
        body["thoughtsTokenCount"] = usage.thought
    return body


def live_usage_metadata(usage: Usage) -> Json:
    """A Live API turn's ``usageMetadata``: generateContent's, with the output named
    ``responseTokenCount`` / ``responseTokensDetails`` (the SDK's ``UsageMetadata``)."""
    body = usage_metadata(usage)
    body["responseTokenCount"] = body.pop("candidatesTokenCount")
    if "candidatesTokensDetails" in body:
        body["responseTokensDetails"] = body.pop("candidatesTokensDetails")
    return body


def put_usage_metadata(target: Json, usage: Usage, mode: UsageMode) -> None:
    if mode == "missing":
        return
    target["usageMetadata"] = (
        dict(_MALFORMED_USAGE_METADATA) if mode == "malformed" else usage_metadata(usage)
    )
