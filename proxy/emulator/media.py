"""Imagen and Veo: ``predict``, ``predictLongRunning``, operation polls, video downloads.

- ``POST /{v}/models/{m}:predict`` (Imagen): ``instances[0].prompt`` and
  ``parameters`` (``sampleCount`` 1 to 4, default 4; ``includeRaiReason``;
  ``includeSafetyAttributes``; ``outputOptions.mimeType``) answer
  ``{"predictions": [...]}``: one ``{"bytesBase64Encoded", "mimeType"}`` per
  image, a ``{"raiFilteredReason"}`` entry per filtered image when
  ``includeRaiReason`` is set (filtered images are otherwise simply missing),
  and with ``includeSafetyAttributes`` each image carries ``safetyAttributes``
  and one more entry, ``{"safetyAttributes", "contentType": "Positive Prompt"}``,
  describes the prompt: it is not an image.
- ``POST /{v}/models/{m}:predictLongRunning`` (Veo): ``instances[0].prompt``
  and ``parameters`` (``durationSeconds``, default 8; ``sampleCount`` 1 to 4,
  default 1; ``resolution``) answer the operation ``{"name":
  "models/{m}/operations/{id}"}``.
- ``GET /{v}/models/{m}/operations/{id}``: ``{"name"}`` while running (for
  ``EmulatorConfig.background_seconds``), then ``{"name", "done": true,
  "response": {"@type", "generateVideoResponse": {"generatedSamples": [{"video":
  {"uri"}}], "raiMediaFilteredCount", "raiMediaFilteredReasons"}}}``, or with
  ``x-emulator-operation-error`` on the create, ``{"name", "done": true,
  "error": {"code", "message"}}``.
- the generated videos are stored as generated files (``EmulatorState.files``,
  ``source: GENERATED``) the first time the operation is seen done, so ``files``
  serves them: ``GET /{v}/files/{id}:download?alt=media`` answers their bytes
  (``video/mp4``).

Shapes, as the google-genai SDK reads them (its Developer API converters, read on
2026-11-29): google-genai 1.40.0 ``models.py`` ``_GenerateImagesParameters_to_mldev``,
``_GenerateImagesConfig_to_mldev`` (``sampleCount``, ``includeRaiReason``,
``includeSafetyAttributes``, ``outputOptions.mimeType``), ``_GeneratedImage_from_mldev``
(``bytesBase64Encoded``, ``mimeType``, ``raiFilteredReason``, ``safetyAttributes``,
``contentType``), ``_GenerateVideosConfig_to_mldev`` (``sampleCount``,
``durationSeconds``, ``resolution``); google-genai 3.6.1 ``_operations_converters.py``
``_GenerateVideosOperation_from_mldev`` (``name``, ``done``, ``error``,
``response.generateVideoResponse.generatedSamples[].video.uri``,
``raiMediaFilteredCount``, ``raiMediaFilteredReasons``), ``files.download`` (GET
``files/{id}:download?alt=media``, the id taken from the video URI) and
``models.generate_images`` (drops the ``Positive Prompt`` entry). Google's Veo guide
(ai.google.dev/gemini-api/docs/video, quoted in public notes consulted 2026-10-08) polls
``${BASE_URL}/${operation_name}`` and reads
``.response.generateVideoResponse.generatedSamples[0].video.uri``; Google's Imagen guide
documents ``numberOfImages`` "1 to 4 (inclusive). The default is 4."

Triggers (besides those of ``triggers``): ``x-emulator-filtered: N`` on a create
filters N of the requested images or videos; ``x-emulator-operation-error: STATUS``
(400-599) on a ``predictLongRunning`` makes the operation end failed.

The ledger (``EmulatorState.media``) records what was served: images per predict,
and per operation the seconds and videos it generated, counted when it is first
seen done. It is what the proxy's records are compared with.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Final

from aiohttp import web

from .files import EmulatedFile
from .state import ImagesServed, VideoOperation, emulator_state_key
from .wire import (
    DEFAULT_TIER,
    ApiError,
    Json,
    as_list,
    get_field,
    json_body,
    json_response,
    timestamp,
)

# A 1x1 PNG: what every emulated image is (the bytes do not matter, their shape does).
PNG: Final = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNQSFgAAAHEASFiX4r9AAAAAElFTkSuQmCC"
)
_PNG_MIME: Final = "image/png"
# The start of an MP4 file ("ftyp" box), followed by the operation name.
_MP4_HEAD: Final = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
# Google serves generated videos from its own host whatever the client called; the SDK
# keeps only the file id of this URI and downloads through its own base URL.
_FILES_HOST: Final = "https://generativelanguage.googleapis.com"
# Google's documented defaults: Imagen returns 4 images, Veo one 8-second video.
DEFAULT_IMAGES: Final = 4
DEFAULT_VIDEOS: Final = 1
DEFAULT_VIDEO_SECONDS: Final = 8
_MAX_SAMPLES: Final = 4
_MAX_SECONDS: Final = 60
# Placeholders in the fields' places; Google's own wording varies by filter.
_FILTER_REASON: Final = "The emulator's safety filter removed this image (x-emulator-filtered)."
_VIDEO_FILTER_REASON: Final = (
    "The emulator's safety filter removed this video (x-emulator-filtered)."
)
_RESPONSE_TYPE: Final = (
    "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
)
# google.rpc.Code for an HTTP status, for a failed operation's ``error.code``.
_RPC_CODES: Final = {400: 3, 403: 7, 404: 5, 429: 8, 499: 1, 500: 13, 503: 14, 504: 4}


def _count(value: object, name: str, default: int, maximum: int) -> int:
    """A positive integer parameter, given as a JSON number or a numeric string."""
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ApiError(400, f"{name} must be an integer from 1 to {maximum}.")
    return value


def filtered_count(request: web.Request, requested: int) -> int:
    """How many of ``requested`` images or videos ``x-emulator-filtered`` filters out."""
    raw = request.headers.get("x-emulator-filtered")
    if raw is None:
        return 0
    if not raw.strip().isdigit() or int(raw) > requested:
        raise ApiError(
            400, f"x-emulator-filtered must be an integer from 0 to the {requested} requested."
        )
    return int(raw)


def operation_error(request: web.Request) -> int | None:
    """The failure ``x-emulator-operation-error`` asks an operation to end with."""
    raw = request.headers.get("x-emulator-operation-error")
    if raw is None:
        return None
    if not raw.strip().isdigit() or not 400 <= int(raw) <= 599:
        raise ApiError(400, "x-emulator-operation-error must be an HTTP error status (400-599).")
    return int(raw)


async def _prompted(request: web.Request) -> tuple[str, Json]:
    """The model of the path and the request's ``parameters`` (an instance with a prompt
    or an image is required)."""
    body = await json_body(request)
    instances = as_list(body.get("instances"))
    first = instances[0] if instances else None
    if not isinstance(first, dict) or not (
        isinstance(first.get("prompt"), str) or isinstance(first.get("image"), dict)
    ):
        raise ApiError(400, "instances[0] must carry a prompt (or an image).")
    parameters = body.get("parameters")
    return request.match_info["model"], parameters if isinstance(parameters, dict) else {}


async def predict(request: web.Request) -> web.Response:
    """Imagen: the images of one prompt, some possibly filtered."""
    model, parameters = await _prompted(request)
    requested = _count(
        get_field(parameters, "sampleCount"), "sampleCount", DEFAULT_IMAGES, _MAX_SAMPLES
    )
    filtered = filtered_count(request, requested)
    options = get_field(parameters, "outputOptions")
    mime = get_field(options, "mimeType") if isinstance(options, dict) else None
    safety = get_field(parameters, "includeSafetyAttributes") is True
    predictions: list[Json] = []
    for _ in range(requested - filtered):
        image: Json = {"bytesBase64Encoded": PNG, "mimeType": mime or _PNG_MIME}
        if safety:
            image["safetyAttributes"] = {"categories": ["Violence"], "scores": [0.1]}
        predictions.append(image)
    if get_field(parameters, "includeRaiReason") is True:
        predictions.extend({"raiFilteredReason": _FILTER_REASON} for _ in range(filtered))
    if safety:
        predictions.append(
            {
                "safetyAttributes": {"categories": ["Violence"], "scores": [0.1]},
                "contentType": "Positive Prompt",
            }
        )
    state = request.app[emulator_state_key]
    state.media.images.append(ImagesServed(model, requested - filtered, filtered))
    return json_response({"predictions": predictions}, DEFAULT_TIER)


async def predict_long_running(request: web.Request) -> web.Response:
    """Veo: start an operation that ends done after ``background_seconds``."""
    model, parameters = await _prompted(request)
    requested = _count(
        get_field(parameters, "sampleCount"), "sampleCount", DEFAULT_VIDEOS, _MAX_SAMPLES
    )
    seconds = _count(
        get_field(parameters, "durationSeconds"),
        "durationSeconds",
        DEFAULT_VIDEO_SECONDS,
        _MAX_SECONDS,
    )
    resolution = get_field(parameters, "resolution")
    state = request.app[emulator_state_key]
    # Google's operation ids are short lower-case alphanumerics (e.g. "vz341u0pmdlc").
    name = f"models/{model}/operations/{secrets.token_hex(6)}"
    state.media.add_operation(
        VideoOperation(
            name=name,
            model=model,
            seconds=seconds,
            requested=requested,
            filtered=filtered_count(request, requested),
            resolution=resolution if isinstance(resolution, str) else None,
            ready_at=time.monotonic() + state.config.background_seconds,
            error_status=operation_error(request),
        )
    )
    return json_response({"name": name}, DEFAULT_TIER)


def _operation_body(operation: VideoOperation, version: str) -> Json:
    if not operation.done:
        return {"name": operation.name}
    if operation.error_status is not None:
        return {
            "name": operation.name,
            "done": True,
            "error": {
                "code": _RPC_CODES.get(operation.error_status, 2),
                "message": f"Video generation failed (x-emulator-operation-error: "
                f"{operation.error_status}).",
            },
        }
    video_response: Json = {
        "generatedSamples": [
            {"video": {"uri": f"{_FILES_HOST}/{version}/files/{file_id}:download?alt=media"}}
            for file_id in operation.files
        ]
    }
    if operation.filtered:
        video_response["raiMediaFilteredCount"] = operation.filtered
        video_response["raiMediaFilteredReasons"] = [_VIDEO_FILTER_REASON] * operation.filtered
    return {
        "name": operation.name,
        "done": True,
        "response": {"@type": _RESPONSE_TYPE, "generateVideoResponse": video_response},
    }


async def get_operation(request: web.Request) -> web.Response:
    state = request.app[emulator_state_key]
    name = f"models/{request.match_info['model']}/operations/{request.match_info['operation']}"
    operation = state.media.operations.get(name)
    if operation is None:
        raise ApiError(404, f"Operation {name!r} was not found.")
    was_done = operation.done
    operation.refresh(time.monotonic())
    version = request.match_info["version"]
    if operation.done and not was_done:
        for file_id in operation.files:
            state.store_file(_generated_file(file_id, name, version))
    return json_response(_operation_body(operation, version), DEFAULT_TIER)


def _generated_file(file_id: str, operation_name: str, version: str) -> EmulatedFile:
    """A generated video as the Files API serves it (``google.genai.types.File``)."""
    data = video_bytes(operation_name)
    now = datetime.now(UTC)
    resource: Json = {
        "name": f"files/{file_id}",
        "mimeType": "video/mp4",
        "sizeBytes": str(len(data)),
        "createTime": timestamp(now),
        "updateTime": timestamp(now),
        "expirationTime": timestamp(now + timedelta(hours=48)),
        "uri": f"{_FILES_HOST}/{version}/files/{file_id}",
        "downloadUri": f"{_FILES_HOST}/{version}/files/{file_id}:download?alt=media",
        "state": "ACTIVE",
        "source": "GENERATED",
    }
    return EmulatedFile(resource["name"], resource, data)


def video_bytes(operation_name: str) -> bytes:
    """The bytes the emulator serves for a video of ``operation_name``."""
    return _MP4_HEAD + operation_name.encode()


def add_media_routes(router: web.UrlDispatcher, version: str, model: str) -> None:
    router.add_post(f"/{version}/models/{model}:predict", predict)
    router.add_post(f"/{version}/models/{model}:predictLongRunning", predict_long_running)
    router.add_get(f"/{version}/models/{model}/operations/{{operation}}", get_operation)


__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_VIDEOS",
    "DEFAULT_VIDEO_SECONDS",
    "PNG",
    "add_media_routes",
    "filtered_count",
    "operation_error",
    "video_bytes",
]
