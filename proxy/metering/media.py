"""What images and videos a response bills: Imagen ``predict`` and Veo operations. Pure.

Google bills Imagen per image returned and Veo per second of video generated
(docs/pricing.md, "Images and video", has the sources). Neither response
carries a usage object, so the meter counts what it sees:

- ``predict`` (``summarize_predict``): ``predictions[]`` holds one entry per
  image, with ``bytesBase64Encoded`` (or ``gcsUri``); an image the safety filter
  removed is either missing or an entry with only ``raiFilteredReason``, and
  with ``includeSafetyAttributes`` one more entry (``contentType: "Positive
  Prompt"``) describes the prompt. Only the images are billed: the SDK's own
  ``generate_images`` drops the prompt entry, Google prices Imagen "per Image" of
  output, and a filtered image is not output.
- ``predictLongRunning`` answers an operation ``{"name"}``; the video's length
  is in the *request* (``parameters.durationSeconds``, per video, default 8;
  ``parameters.resolution``, default 720p), so ``video_request`` reads it
  there and the proxy keeps it with the operation's owner until the operation
  is done.
- The done operation (``operation_outcome``) lists the generated videos
  (``response.generateVideoResponse.generatedSamples[].video.uri``); filtered
  ones are only counted (``raiMediaFilteredCount``), and a failed operation has
  ``error`` instead of ``response``. The bill is seconds × videos generated:
  Google's page says "You will only be charged if your video is successfully
  generated", so a failed operation, or a filtered video, bills nothing.

Field names are those of the SDK's Developer API converters (google-genai 1.40.0
``_GeneratedImage_from_mldev``, ``_GenerateVideosConfig_to_mldev``; 3.6.1
``_operations_converters._GenerateVideosOperation_from_mldev``), read in either
spelling Google's JSON parser accepts. Nothing here raises on wire input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from .parsers import ResponseSummary
from .records import Usage

__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_RESOLUTION",
    "DEFAULT_VIDEO_SECONDS",
    "OperationOutcome",
    "VideoRequest",
    "file_name",
    "images_requested",
    "images_returned",
    "operation_outcome",
    "summarize_operation",
    "summarize_predict",
    "video_request",
]

# Google's Imagen guide: numberOfImages (sampleCount) "1 to 4 (inclusive). The default is 4."
DEFAULT_IMAGES: Final = 4
# Google's Veo guide: durationSeconds defaults to 8; resolution to 720p.
DEFAULT_VIDEO_SECONDS: Final = 8
DEFAULT_RESOLUTION: Final = "720p"
# Beyond any Veo model's longest clip or largest sample count: a larger figure is not
# trusted as a bill (the operation would have been refused upstream anyway).
_MAX_SECONDS: Final = 600
_MAX_SAMPLES: Final = 16
# "https://generativelanguage.googleapis.com/v1beta/files/abc:download?alt=media",
# "files/abc" or "/v1beta/files/abc": the file the SDK's ``t_file_name`` would download.
_FILE_ID: Final = re.compile(r"(?:^|/)files/(?P<id>[a-z0-9-]+)", re.IGNORECASE)


def _field(mapping: object, camel: str, snake: str) -> object:
    if not isinstance(mapping, dict):
        return None
    return mapping[camel] if camel in mapping else mapping.get(snake)


def _positive(value: object, limit: int) -> int | None:
    """A positive count sent as a JSON number or a numeric string (proto int32 as JSON)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        return None
    return value


@dataclass(frozen=True, slots=True)
class VideoRequest:
    """What a ``predictLongRunning`` asks for: seconds per video, videos, resolution.

    ``defaulted`` says the duration was not readable as a positive count and the
    documented default stands in (a record priced on it is flagged ``estimated``).
    """

    seconds: int = DEFAULT_VIDEO_SECONDS
    videos: int = 1
    resolution: str = DEFAULT_RESOLUTION
    defaulted: bool = False

    def usage(self, videos: int | None = None) -> Usage:
        """The video seconds of ``videos`` videos (default: as many as requested)."""
        seconds = self.seconds * (self.videos if videos is None else max(videos, 0))
        return Usage(
            video_seconds=seconds,
            video_seconds_by_resolution={self.resolution: seconds} if seconds else {},
        )

    def to_state(self) -> dict[str, Any]:
        """The request as kept in the operation's owned-resource state."""
        return {
            "seconds": self.seconds,
            "videos": self.videos,
            "resolution": self.resolution,
            "defaulted": self.defaulted,
        }

    @classmethod
    def from_state(cls, state: object) -> VideoRequest:
        """The request back from an owned resource's state; defaults for anything missing."""
        if not isinstance(state, dict):
            return cls(defaulted=True)
        seconds = _positive(state.get("seconds"), _MAX_SECONDS)
        videos = _positive(state.get("videos"), _MAX_SAMPLES)
        resolution = state.get("resolution")
        return cls(
            seconds=seconds or DEFAULT_VIDEO_SECONDS,
            videos=videos or 1,
            resolution=resolution if isinstance(resolution, str) else DEFAULT_RESOLUTION,
            defaulted=seconds is None or state.get("defaulted") is True,
        )


def _resolution(value: object) -> str:
    """``720p``, ``1080p``, ``4k``: lower-case, as the catalog keys them."""
    if isinstance(value, str) and value.strip():
        return value.strip().lower()[:16]
    return DEFAULT_RESOLUTION


def video_request(body: object) -> VideoRequest:
    """The video a ``predictLongRunning`` body asks for (defaults where it says nothing)."""
    parameters = _field(body, "parameters", "parameters")
    raw_seconds = _field(parameters, "durationSeconds", "duration_seconds")
    seconds = _positive(raw_seconds, _MAX_SECONDS)
    videos = _positive(_field(parameters, "sampleCount", "sample_count"), _MAX_SAMPLES)
    return VideoRequest(
        seconds=seconds or DEFAULT_VIDEO_SECONDS,
        videos=videos or 1,
        resolution=_resolution(_field(parameters, "resolution", "resolution")),
        # absent is Google's default, not a guess; present but unreadable is
        defaulted=raw_seconds is not None and seconds is None,
    )


def images_requested(body: object) -> int:
    """How many images a ``predict`` body asks for (``parameters.sampleCount``)."""
    parameters = _field(body, "parameters", "parameters")
    count = _positive(_field(parameters, "sampleCount", "sample_count"), _MAX_SAMPLES)
    return count or DEFAULT_IMAGES


def images_returned(payload: object) -> int | None:
    """How many images a ``predict`` response returned; None when it is not one."""
    predictions = _field(payload, "predictions", "predictions")
    if not isinstance(predictions, list):
        return None
    return sum(
        1
        for p in predictions
        if isinstance(p, dict)
        and (
            isinstance(_field(p, "bytesBase64Encoded", "bytes_base64_encoded"), str)
            or isinstance(_field(p, "gcsUri", "gcs_uri"), str)
        )
    )


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """A polled operation: whether it is done, failed, and the videos it generated.

    ``videos`` are the generated files' names (``files/{id}``), in order;
    ``unreadable`` counts generated samples whose URI names no file (still
    billed: the video was generated). ``malformed``: done, but neither a
    readable response nor an error.
    """

    name: str | None = None
    done: bool = False
    failed: bool = False
    videos: tuple[str, ...] = ()
    unreadable: int = 0
    filtered: int = 0
    malformed: bool = False

    @property
    def generated(self) -> int:
        return len(self.videos) + self.unreadable


def file_name(uri: object) -> str | None:
    """``files/{id}`` of a generated video's URI, as the SDK's ``t_file_name`` reads it."""
    if not isinstance(uri, str):
        return None
    m = _FILE_ID.search(uri.partition("?")[0])
    return f"files/{m.group('id').lower()}" if m is not None else None


def operation_outcome(payload: object) -> OperationOutcome:
    """What a ``GET .../operations/{id}`` response says; never raises."""
    if not isinstance(payload, dict):
        return OperationOutcome(malformed=True)
    name = payload.get("name")
    name = name if isinstance(name, str) and name else None
    if payload.get("done") is not True:
        return OperationOutcome(name=name)
    if isinstance(payload.get("error"), dict):
        return OperationOutcome(name=name, done=True, failed=True)
    video_response = _field(
        _field(payload, "response", "response"), "generateVideoResponse", "generate_video_response"
    )
    if not isinstance(video_response, dict):
        return OperationOutcome(name=name, done=True, malformed=True)
    samples = _field(video_response, "generatedSamples", "generated_samples")
    videos: list[str] = []
    unreadable = 0
    for sample in samples if isinstance(samples, list) else []:
        found = file_name(_field(_field(sample, "video", "video"), "uri", "uri"))
        if found is None:
            unreadable += 1
        else:
            videos.append(found)
    filtered = _positive(
        _field(video_response, "raiMediaFilteredCount", "rai_media_filtered_count"),
        _MAX_SAMPLES,
    )
    return OperationOutcome(
        name=name,
        done=True,
        videos=tuple(videos),
        unreadable=unreadable,
        filtered=filtered or 0,
        # proto3 JSON leaves an empty list out: every video filtered is no samples at all
        malformed=samples is not None and not isinstance(samples, list),
    )


def summarize_predict(payload: object) -> ResponseSummary:
    """A ``predict`` response's bill: the images it returned (zero, flagged, if unreadable)."""
    images = images_returned(payload)
    if images is None:
        return ResponseSummary(usage=Usage(), parse_error=True)
    return ResponseSummary(usage=Usage(images=images))


def summarize_operation(outcome: OperationOutcome, request: VideoRequest) -> ResponseSummary:
    """The bill of a done video operation: seconds per video × videos generated.

    A failed operation bills nothing; a done one without a readable response bills
    nothing and is flagged; a duration the request gave unreadably is billed at the
    default and flagged ``estimated``.
    """
    usage = request.usage(videos=0 if outcome.failed else outcome.generated)
    return ResponseSummary(
        usage=usage,
        parse_error=outcome.malformed,
        estimated=request.defaulted and usage.video_seconds > 0,
    )
