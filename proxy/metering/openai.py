"""Usage of Gemini's OpenAI-compatible endpoint, in the OpenAI shapes: pure.

``POST /{v}/openai/chat/completions`` and ``POST /{v}/openai/embeddings`` answer
OpenAI's objects, whose ``usage`` is ``prompt_tokens``, ``completion_tokens``,
``total_tokens`` and the optional ``prompt_tokens_details`` (``cached_tokens``,
``text_tokens``, ``image_tokens``, ``audio_tokens``) and
``completion_tokens_details`` (``reasoning_tokens``, ``text_tokens``,
``audio_tokens``), as the ``openai`` SDK 3.57.0 types them
(``openai/types/completion_usage.py``). ``server.forward`` calls
``summarize_chat`` / ``summarize_embeddings`` on a whole body and
``OpenAIChatStreamTap`` on a stream; ``ask_stream_usage`` and
``UsageChunkFilter`` keep a stream metered when its client did not ask for usage.

Mapping onto the five categories (docs/metering.md, "OpenAI-compatible endpoint"):

- input = ``prompt_tokens`` (cached part included, as Gemini's ``promptTokenCount``);
  cached = ``prompt_tokens_details.cached_tokens``;
- thinking and output from ``completion_tokens``, ``reasoning_tokens`` and
  ``total_tokens`` (``_split_completion``): OpenAI counts reasoning inside
  ``completion_tokens``; Gemini's endpoint was seen to leave its thoughts out of
  ``completion_tokens`` and count them only in ``total_tokens`` (a recorded
  stream on discuss.ai.google.dev, thread 127400, February 2026, read
  2026-11-29: ``prompt_tokens`` 9, ``completion_tokens`` 1, ``total_tokens``
  103 on a thinking model). Both conventions are read: whatever the total holds
  beyond prompt and completion is thinking when no ``reasoning_tokens`` says
  otherwise.
- intermediate (tool use) is never reported by this shape: 0.

``POST /{v}/openai/images/generations`` (``summarize_images``,
``OpenAIImagesStreamTap``) answers OpenAI's ``ImagesResponse``. What Google's
endpoint takes and answers, and where that is written down:

- Google's OpenAI-compatibility guide, "Generate an image"
  (https://ai.google.dev/gemini-api/docs/openai; read 2026-11-29 in a copy of its
  Thai edition, "last updated 2026-09-12 UTC", kept in a public repository, its
  words translated back here): ``client.images.generate(model=..., prompt=...,
  response_format='b64_json', n=1)``, reading ``response.data[].b64_json``;
  "Supported parameters are ``prompt``, ``model``, ``n``, ``size``, and
  ``response_format``", everything else "silently ignored" (``stream``
  included) but ``extra_body``'s ``aspect_ratio``, ``generation_config``
  (e.g. ``candidateCount``), ``safety_settings`` and ``tools``. That version
  names ``gemini-2.5-flash-image`` and ``gemini-3-pro-image-preview``;
  earlier copies of it named ``imagen-3.0-generate-002`` ("Image generation
  is only available in the paid tier"), so both per-image (Imagen) and
  per-token (Gemini image) models reach this route.
- The ``openai`` SDK 3.57.0 (``types/images_response.py``, ``types/image.py``):
  ``{"created", "data": [{"b64_json" | "url", "revised_prompt"}], "usage":
  {"input_tokens", "input_tokens_details": {"text_tokens", "image_tokens"},
  "output_tokens", "output_tokens_details": {"image_tokens", "text_tokens"},
  "total_tokens"}}``, every field optional but ``created``.
- A relay built on Google's layer (xhighhongo41/nicheLLMProxy, CHANGELOG
  v1.3.1 and README, September 2026): "Gemini returns a single image per
  request" whatever ``n`` asks, and data comes back as base64.

Not confirmed by any source: whether Google's answer carries ``usage`` (for
the Gemini image models; OpenAI's reference says it is for GPT image models
only) and in which shape, and what it answers when every image is filtered.
So the meter counts the images actually returned, the ``data`` entries with
image bytes or a URL (a filtered image is one without either, or none at
all), and bills them at the model's ``per_image`` price as Imagen's
``predict`` is (``media.summarize_predict``). Only for a model the catalog
prices by the token, and only when the answer reports ``usage``, the tokens
are billed instead (``usage_from_openai_images``): input by modality from
``input_tokens_details``; output as image tokens unless
``output_tokens_details`` splits it (this route's output is images, and the
image rate is the higher one, so an unsplit count is never billed below its
price); whatever ``total_tokens`` holds beyond them is thinking, as for chat.
Which of the two applies is the caller's to say (``per_image``: the catalog
knows, this module does not).

Counts follow the strict rules of ``metering.parsers`` (non-negative ints, a
missing count is 0); the ``summarize_*`` functions never raise.
"""

from __future__ import annotations

import re
from typing import Final

from .parsers import (
    CHARS_PER_TOKEN,
    ResponseSummary,
    UsageParseError,
    _as_count,
    _as_dict,
    nonempty_str,
    parse_json,
    with_estimate,
)
from .records import Usage
from .streams import SSEDecoder

__all__ = [
    "DEFAULT_OPENAI_IMAGES",
    "OpenAIChatStreamTap",
    "OpenAIImagesStreamTap",
    "UsageChunkFilter",
    "ask_stream_usage",
    "estimate_embeddings_usage",
    "images_in_data",
    "openai_images_requested",
    "summarize_chat",
    "summarize_embeddings",
    "summarize_images",
    "usage_from_openai",
    "usage_from_openai_embeddings",
    "usage_from_openai_images",
]

# prompt_tokens_details / completion_tokens_details keys that name a modality.
_PROMPT_MODALITIES: Final = (
    ("text_tokens", "text"),
    ("image_tokens", "image"),
    ("audio_tokens", "audio"),
)
_COMPLETION_MODALITIES: Final = (("text_tokens", "text"), ("audio_tokens", "audio"))


def _details(d: dict[str, object], key: str) -> dict[str, object]:
    value = d.get(key)
    return {} if value is None else _as_dict(value, key)


def _by_modality(
    details: dict[str, object], names: tuple[tuple[str, str], ...], where: str, tokens: int
) -> dict[str, int]:
    """A modality split from a details object; what it does not name counts as text.

    Empty when the details name no modality: the category then prices as text.
    """
    split = {
        modality: count
        for key, modality in names
        if (count := _as_count(details.get(key), f"{where}.{key}"))
    }
    if not split:
        return {}
    rest = tokens - sum(split.values())
    if rest > 0:
        split["text"] = split.get("text", 0) + rest
    return split


def _split_completion(
    prompt: int, completion: int, total: int | None, reasoning: int | None
) -> tuple[int, int]:
    """(output, thinking) out of ``completion_tokens`` and what surrounds it.

    - ``reasoning_tokens`` reported, no larger than the completion, and a total
      that is prompt + completion (or none): OpenAI's convention, the reasoning
      is part of the completion.
    - ``reasoning_tokens`` reported otherwise: it is beside the completion.
    - none reported: whatever the total holds beyond prompt and completion is
      thinking (Gemini's ``totalTokenCount`` is prompt + candidates + tool use +
      thoughts, and this shape has no tool-use count; thinking is billed at the
      output rate, so an unexplained gap is never billed below its price).
    """
    if reasoning is None:
        gap = 0 if total is None else total - prompt - completion
        return completion, max(gap, 0)
    if reasoning <= completion and (total is None or total == prompt + completion):
        return completion - reasoning, reasoning
    return completion, reasoning


def usage_from_openai(obj: object) -> Usage:
    """A chat completion's ``usage`` as a ``Usage``; ``UsageParseError`` when malformed."""
    d = _as_dict(obj, "usage")
    prompt = _as_count(d.get("prompt_tokens"), "prompt_tokens")
    completion = _as_count(d.get("completion_tokens"), "completion_tokens")
    raw_total = d.get("total_tokens")
    total = None if raw_total is None else _as_count(raw_total, "total_tokens")
    prompt_details = _details(d, "prompt_tokens_details")
    completion_details = _details(d, "completion_tokens_details")
    cached = _as_count(prompt_details.get("cached_tokens"), "prompt_tokens_details.cached_tokens")
    raw_reasoning = completion_details.get("reasoning_tokens")
    reasoning = (
        None
        if raw_reasoning is None
        else _as_count(raw_reasoning, "completion_tokens_details.reasoning_tokens")
    )
    output, thinking = _split_completion(prompt, completion, total, reasoning)
    return Usage(
        input_tokens=prompt,
        cached_tokens=cached,
        output_tokens=output,
        thinking_tokens=thinking,
        total_tokens=prompt + output + thinking if total is None else total,
        input_by_modality=_by_modality(
            prompt_details, _PROMPT_MODALITIES, "prompt_tokens_details", prompt
        ),
        output_by_modality=_by_modality(
            completion_details, _COMPLETION_MODALITIES, "completion_tokens_details", output
        ),
    )


def usage_from_openai_embeddings(obj: object) -> Usage:
    """An embeddings response's ``usage`` (``prompt_tokens``, ``total_tokens``): input only."""
    d = _as_dict(obj, "usage")
    prompt = _as_count(d.get("prompt_tokens"), "prompt_tokens")
    raw_total = d.get("total_tokens")
    total = prompt if raw_total is None else _as_count(raw_total, "total_tokens")
    return Usage(input_tokens=prompt, total_tokens=total)


def summarize_chat(obj: object) -> ResponseSummary:
    """Read a ``chat.completion`` body; its ``usage`` is always due."""
    summary = ResponseSummary()
    if not isinstance(obj, dict):
        summary.parse_error = True
        return summary
    summary.response_id = nonempty_str(obj.get("id"))
    summary.model = nonempty_str(obj.get("model"))
    raw = obj.get("usage")
    if raw is None:
        summary.parse_error = True
        return summary
    try:
        summary.usage = usage_from_openai(raw)
    except UsageParseError:
        summary.parse_error = True
    return summary


def _input_tokens(item: object) -> int | None:
    """One embeddings ``input`` item: text at ``ceil(chars / 4)``, a token array as its length."""
    if isinstance(item, str):
        return -(-len(item) // CHARS_PER_TOKEN)
    if isinstance(item, list) and all(type(token) is int for token in item):
        return len(item)
    return None


def estimate_embeddings_usage(request: object) -> Usage | None:
    """The input tokens of an OpenAI embeddings request, counted by the proxy.

    ``input`` is a string, a list of strings, a token array or a list of token
    arrays (OpenAI's reference); a string counts ``ceil(characters / 4)``, as
    Google's token guide estimates (``parsers.CHARS_PER_TOKEN``), rounded per
    input. ``None`` when the body has no ``input`` of those shapes.
    """
    if not isinstance(request, dict):
        return None
    value = request.get("input")
    single = _input_tokens(value)
    if single is not None and not (isinstance(value, list) and not value):
        tokens = single
    elif isinstance(value, list) and value:
        counts = [_input_tokens(item) for item in value]
        if any(count is None for count in counts):
            return None
        tokens = sum(count for count in counts if count is not None)
    else:
        return None
    return Usage(input_tokens=tokens, total_tokens=tokens)


def summarize_embeddings(response: object, request: object) -> ResponseSummary:
    """Read an embeddings body, given its request: the reported usage, else an estimate.

    Like ``parsers.summarize_embed``: a missing ``usage`` is estimated from the
    request (``estimated``); a malformed one, or a body that is not an object,
    is flagged ``parse_error`` and estimated too.
    """
    summary = ResponseSummary()
    if not isinstance(response, dict):
        summary.parse_error = True
    else:
        summary.model = nonempty_str(response.get("model"))
        raw = response.get("usage")
        if raw is not None:
            try:
                summary.usage = usage_from_openai_embeddings(raw)
                return summary
            except UsageParseError:
                summary.parse_error = True
    return with_estimate(summary, estimate_embeddings_usage(request))


# --- images -------------------------------------------------------------------------------

# OpenAI's reference: ``n`` "defaults to 1"; Google's guide passes it through unchanged.
DEFAULT_OPENAI_IMAGES: Final = 1
# Beyond any model's largest ``n`` (OpenAI's is 10, Imagen's 4): a larger figure is not
# trusted as a reservation (the upstream refuses it anyway).
_MAX_OPENAI_IMAGES: Final = 16
_INPUT_DETAILS: Final = (("text_tokens", "text"), ("image_tokens", "image"))
_OUTPUT_DETAILS: Final = (("image_tokens", "image"), ("text_tokens", "text"))


def openai_images_requested(body: object) -> int:
    """How many images an images request asks for (``n``), for its reservation."""
    n = body.get("n") if isinstance(body, dict) else None
    if type(n) is int and 0 < n <= _MAX_OPENAI_IMAGES:
        return n
    return DEFAULT_OPENAI_IMAGES


def _is_image(entry: object) -> bool:
    """A ``data`` entry that carries an image: its bytes (``b64_json``) or its ``url``."""
    return isinstance(entry, dict) and any(
        isinstance(value, str) and value for value in (entry.get("b64_json"), entry.get("url"))
    )


def images_in_data(payload: object) -> int | None:
    """The images an ``ImagesResponse`` returned; None when it has no ``data`` list."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    return sum(1 for entry in data if _is_image(entry))


def usage_from_openai_images(obj: object) -> Usage:
    """An ``ImagesResponse``'s ``usage`` as a ``Usage``; ``UsageParseError`` when malformed.

    ``input_tokens`` (text and image, split by ``input_tokens_details``) is input;
    ``output_tokens`` is output, split by ``output_tokens_details`` or else all image
    (what this route generates, and the dearer rate); the part of ``total_tokens``
    beyond the two is thinking (a thinking image model's thoughts, as Gemini counts
    them in its total), never a negative.
    """
    d = _as_dict(obj, "usage")
    prompt = _as_count(d.get("input_tokens"), "input_tokens")
    output = _as_count(d.get("output_tokens"), "output_tokens")
    raw_total = d.get("total_tokens")
    total = None if raw_total is None else _as_count(raw_total, "total_tokens")
    output, thinking = _split_completion(prompt, output, total, None)
    output_split = _by_modality(
        _details(d, "output_tokens_details"), _OUTPUT_DETAILS, "output_tokens_details", output
    )
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        thinking_tokens=thinking,
        total_tokens=prompt + output + thinking if total is None else total,
        input_by_modality=_by_modality(
            _details(d, "input_tokens_details"), _INPUT_DETAILS, "input_tokens_details", prompt
        ),
        output_by_modality=output_split or ({"image": output} if output else {}),
    )


def summarize_images(payload: object, *, per_image: bool) -> ResponseSummary:
    """Read an ``ImagesResponse``: its images, or its tokens for a token-priced model.

    ``per_image``: the model is priced per image (Imagen), so any ``usage`` is not
    its bill. Otherwise a readable ``usage`` is billed; without one (or with a
    malformed one, flagged) the images are counted, which a model without a
    ``per_image`` price leaves unpriced rather than free. An answer without a
    ``data`` list is flagged ``parse_error`` (zero images).
    """
    summary = ResponseSummary()
    images = images_in_data(payload)
    summary.parse_error = images is None
    raw = payload.get("usage") if isinstance(payload, dict) else None
    if not per_image and raw is not None:
        try:
            summary.usage = usage_from_openai_images(raw)
            return summary
        except UsageParseError:
            summary.parse_error = True
    summary.usage = Usage(images=images or 0)
    return summary


class OpenAIImagesStreamTap:
    """Reads a streamed ``ImagesResponse``, should one come: OpenAI's image events.

    Google's guide lists no ``stream`` for this route (unlisted parameters are
    "silently ignored"), so an event stream here is not Google's documented
    answer. OpenAI's is SSE of ``image_generation.partial_image`` and
    ``image_generation.completed`` events (the ``openai`` SDK 3.57.0,
    ``types/image_gen_completed_event.py``: ``b64_json``, ``usage``); each
    completed event with an image counts one image, billed per image. Its
    ``usage`` is not read: a stream on a token-priced model, a stream with no
    completed image, or an event that is not a JSON object is flagged
    ``parse_error``, so the record is kept and looked at rather than guessed.
    """

    __slots__ = ("_garbage", "_images", "_per_image", "_sse", "_summary")

    def __init__(self, *, per_image: bool) -> None:
        self._sse = SSEDecoder()
        self._per_image = per_image
        self._images = 0
        self._garbage = False
        self._summary: ResponseSummary | None = None

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the stream."""
        for payload in self._sse.feed(chunk):
            self._event(payload)

    def finish(self) -> ResponseSummary:
        """The summary once the stream has ended (idempotent)."""
        if self._summary is None:
            for payload in self._sse.close():
                self._event(payload)
            self._summary = ResponseSummary(
                usage=Usage(images=self._images),
                parse_error=self._garbage or not self._images or not self._per_image,
            )
        return self._summary

    def _event(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            return
        event = parse_json(payload)
        if not isinstance(event, dict):
            self._garbage = True
        elif event.get("type") == "image_generation.completed" and _is_image(event):
            self._images += 1


# --- streams ------------------------------------------------------------------------------


def _usage_only(payload: bytes) -> bool:
    """A chunk that carries usage and no choice: what ``include_usage`` adds to a stream."""
    chunk = parse_json(payload)
    return (
        isinstance(chunk, dict)
        and isinstance(chunk.get("usage"), dict)
        and not chunk.get("choices")
    )


class OpenAIChatStreamTap:
    """Reads a streamed chat completion: SSE of ``chat.completion.chunk`` objects, ``[DONE]``.

    The usage is the last non-null ``usage`` seen. With ``include_usage``
    OpenAI sends it once, on a final chunk whose ``choices`` is empty; Gemini's
    endpoint was seen sending it on every chunk, as running totals (thread
    127400 above: ``completion_tokens`` 1, then 3), so usages are never added
    up. ``parse_error`` when no usage came, the last one is malformed, or an
    event was not a JSON object.
    """

    __slots__ = ("_done", "_garbage", "_id", "_model", "_sse", "_summary", "_usage")

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._done = False
        self._garbage = False
        self._usage: object = None
        self._id: str | None = None
        self._model: str | None = None
        self._summary: ResponseSummary | None = None

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the stream."""
        if self._done:
            return
        for payload in self._sse.feed(chunk):
            self._event(payload)

    def finish(self) -> ResponseSummary:
        """The summary once the stream has ended (idempotent)."""
        if self._summary is not None:
            return self._summary
        if not self._done:
            for payload in self._sse.close():
                self._event(payload)
        summary = ResponseSummary(response_id=self._id, model=self._model)
        summary.parse_error = self._garbage
        if self._usage is None:
            summary.parse_error = True
        else:
            try:
                summary.usage = usage_from_openai(self._usage)
            except UsageParseError:
                summary.parse_error = True
        self._summary = summary
        return summary

    def _event(self, payload: bytes) -> None:
        if self._done:
            return
        if payload == b"[DONE]":
            self._done = True
            return
        chunk = parse_json(payload)
        if not isinstance(chunk, dict):
            self._garbage = True
            return
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        self._id = self._id or nonempty_str(chunk.get("id"))
        self._model = nonempty_str(chunk.get("model")) or self._model


def ask_stream_usage(body: object) -> dict[str, object] | None:
    """The request body with ``stream_options.include_usage`` set, or None if unneeded.

    A streamed chat completion carries usage only when asked (OpenAI's
    reference, ``stream_options``); the proxy asks on the client's behalf
    and ``UsageChunkFilter`` takes the answer back out of the client's stream.
    None when the body is not a streamed request, already asks, or has a
    ``stream_options`` that is not an object (the upstream judges that one).
    """
    if not isinstance(body, dict) or body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return None
    return {**body, "stream_options": {**options, "include_usage": True}}


# An event ends at a blank line, whatever the line endings (WHATWG event-stream).
_EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class UsageChunkFilter:
    """Drops the usage-only chunks of an SSE stream; relays every other event byte for byte.

    For a client that streamed without ``include_usage``, the chunk the proxy
    asked for (``ask_stream_usage``) is not passed on, so the client sees the
    stream it asked for: with OpenAI's framing that chunk is the only
    difference. Usage carried on chunks that also carry choices (as Gemini's
    endpoint sends it) is left as the upstream sent it. Bytes are passed on an
    event at a time; ``close`` hands back what is left when the stream ends.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of every complete event in ``chunk`` (and before it) to relay."""
        buf = self._buf
        buf += chunk
        out = bytearray()
        start = 0
        for end in _EVENT_END.finditer(buf):
            event = bytes(buf[start : end.end()])
            start = end.end()
            if not self._drop(event):
                out += event
        del buf[:start]
        return bytes(out)

    def close(self) -> bytes:
        """What remains at the end of the stream: an event without its blank line."""
        rest = bytes(self._buf)
        self._buf.clear()
        return b"" if rest and self._drop(rest) else rest

    @staticmethod
    def _drop(event: bytes) -> bool:
        decoder = SSEDecoder()
        payloads = decoder.feed(event) + decoder.close()
        return len(payloads) == 1 and _usage_only(payloads[0])
