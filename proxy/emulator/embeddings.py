"""The emulator's embeddings endpoints: ``embedContent`` and ``batchEmbedContents``.

A self-contained block of the emulator (``app.create_emulator_app`` registers
it with ``add_embedding_routes``); the app's middleware has already checked the
key and applied the delay and failure triggers when these handlers run.

Wire shapes, as Google's embeddings reference documents them:

- ``POST /{v}/models/{model}:embedContent`` with ``{"content": Content, ...}``
  answers ``{"embedding": {"values": [...]}, "usageMetadata": {...}}``;
- ``POST /{v}/models/{model}:batchEmbedContents`` with
  ``{"requests": [{"model": "models/{model}", "content": Content, ...}]}``
  (what google-genai's ``models.embed_content`` sends on the Developer API,
  for one content or several) answers ``{"embeddings": [{"values": [...]}...],
  "usageMetadata": {...}}``, embeddings in request order. A request naming
  another model than the path is 400 INVALID_ARGUMENT, as Google requires them
  to match.

``usageMetadata`` is the Developer API's ``EmbeddingUsageMetadata``:
``promptTokenCount`` and ``promptTokenDetails`` (``[{"modality", "tokenCount"}]``),
for the whole call. Older surfaces of the API answer without it; the existing
``x-emulator-usage`` trigger reproduces both: ``missing`` leaves it out,
``malformed`` sends the count as a string.

Deterministic figures: each content's text (all its ``parts[].text``, the
only fields Google counts) is ``ceil(characters / 4)`` tokens, rounded once
per content as the rest of the emulator rounds per prompt; an ``inlineData``
or ``fileData`` part is the emulator's fixed count for its modality. Vectors
are ``outputDimensionality`` long (default ``DEFAULT_DIMENSIONS``, to keep
responses small) and derived from a hash of the content, so equal contents
embed equally.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

__all__ = [
    "DEFAULT_DIMENSIONS",
    "MAX_DIMENSIONS",
    "add_embedding_routes",
    "embed_one",
    "embedding_tokens",
]

DEFAULT_DIMENSIONS: Final = 8
MAX_DIMENSIONS: Final = 3072
_TIER_HEADER: Final = "x-gemini-service-tier"
_MODALITIES: Final = ("text", "image", "audio", "video", "document")

Json = dict[str, Any]


class _Invalid(ValueError):
    """A request Google would refuse with 400 INVALID_ARGUMENT."""


def add_embedding_routes(
    router: web.UrlDispatcher, version: str, model: str, media_tokens: Mapping[str, int]
) -> None:
    """Register both endpoints; ``version`` and ``model`` are the app's path patterns."""
    handlers = _Handlers(media_tokens)
    router.add_post(f"/{version}/models/{model}:embedContent", handlers.embed_content)
    router.add_post(f"/{version}/models/{model}:batchEmbedContents", handlers.batch_embed)


def embedding_tokens(content: object, media_tokens: Mapping[str, int]) -> dict[str, int]:
    """The tokens of one Content by lower-case modality (empty when nothing counts)."""
    chars = 0
    media: Counter[str] = Counter()
    if isinstance(content, dict):
        parts = content.get("parts")
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                chars += len(text)
            blob = part.get("inlineData") or part.get("inline_data")
            blob = blob or part.get("fileData") or part.get("file_data")
            if isinstance(blob, dict):
                media[_modality(blob.get("mimeType") or blob.get("mime_type"))] += 1
    tokens = {"text": math.ceil(chars / 4)}
    for name, count in media.items():
        tokens[name] = count * media_tokens.get(name, 0)
    return {name: tokens[name] for name in _MODALITIES if tokens.get(name)}


def embed_one(request: object, media_tokens: Mapping[str, int]) -> Json:
    """The EmbedContentResponse to one EmbedContentRequest (a Batch API request), with its
    ``usageMetadata``; ``ValueError`` (with Google's message) when it would be refused."""
    if not isinstance(request, dict) or not isinstance(request.get("content"), dict):
        raise _Invalid("content is required.")
    answer: Json = {"embedding": {"values": _vector(request["content"], _dimensions(request))}}
    usage = _usage(embedding_tokens(request["content"], media_tokens), None)
    if usage is not None:
        answer["usageMetadata"] = usage
    return answer


def _modality(mime_type: object) -> str:
    mime = mime_type.lower() if isinstance(mime_type, str) else ""
    for prefix in ("image", "audio", "video"):
        if mime.startswith(prefix + "/"):
            return prefix
    return "document"


def _vector(content: object, dimensions: int) -> list[float]:
    seed = json.dumps(content, sort_keys=True).encode()
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values.extend(round(byte / 127.5 - 1, 6) for byte in digest)
        counter += 1
    return values[:dimensions]


def _dimensions(request: Mapping[str, object]) -> int:
    raw = request.get("outputDimensionality", request.get("output_dimensionality"))
    if raw is None:
        return DEFAULT_DIMENSIONS
    if type(raw) is not int or not 1 <= raw <= MAX_DIMENSIONS:
        raise _Invalid(f"outputDimensionality must be an integer from 1 to {MAX_DIMENSIONS}.")
    return raw


def _usage(tokens: Mapping[str, int], mode: str | None) -> Json | None:
    total = sum(tokens.values())
    if mode == "missing":
        return None
    if mode == "malformed":
        return {"promptTokenCount": str(total)}
    return {
        "promptTokenCount": total,
        "promptTokenDetails": [
            {"modality": name.upper(), "tokenCount": count} for name, count in tokens.items()
        ],
    }


def _model_name(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.removeprefix("models/")


class _Handlers:
    def __init__(self, media_tokens: Mapping[str, int]) -> None:
        self._media_tokens = media_tokens

    async def embed_content(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            content = body.get("content")
            if not isinstance(content, dict):
                raise _Invalid("content is required.")
            tokens = embedding_tokens(content, self._media_tokens)
            answer: Json = {"embedding": {"values": _vector(content, _dimensions(body))}}
        except _Invalid as exc:
            return _error(str(exc))
        return _answer(answer, tokens, request)

    async def batch_embed(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            requests = body.get("requests")
            if not isinstance(requests, list) or not requests:
                raise _Invalid("requests must be a non-empty list.")
            path_model = request.match_info["model"]
            embeddings: list[Json] = []
            totals: Counter[str] = Counter()
            for i, item in enumerate(requests):
                if not isinstance(item, dict) or not isinstance(item.get("content"), dict):
                    raise _Invalid(f"requests[{i}].content is required.")
                named = _model_name(item.get("model"))
                if named is not None and named != path_model:
                    raise _Invalid(
                        f"requests[{i}].model must match the model of the batch, {path_model!r}."
                    )
                totals.update(embedding_tokens(item["content"], self._media_tokens))
                embeddings.append({"values": _vector(item["content"], _dimensions(item))})
        except _Invalid as exc:
            return _error(str(exc))
        tokens = {name: totals[name] for name in _MODALITIES if totals[name]}
        return _answer({"embeddings": embeddings}, tokens, request)


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise _Invalid("Invalid JSON payload received: expected an object.")
    return body


def _answer(answer: Json, tokens: Mapping[str, int], request: web.Request) -> web.Response:
    # The middleware has already refused any other value of the trigger.
    usage = _usage(tokens, request.headers.get("x-emulator-usage"))
    if usage is not None:
        answer["usageMetadata"] = usage
    return web.json_response(answer, headers={_TIER_HEADER: "standard"})


def _error(message: str) -> web.Response:
    body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    return web.json_response(body, status=400, headers={_TIER_HEADER: "standard"})
