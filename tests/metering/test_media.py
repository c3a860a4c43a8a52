"""The pure readers of Imagen and Veo responses (``proxy.metering.media``).

Shapes are the ones the google-genai SDK's Developer API converters read (cited
in the module); each test names what would be billed wrongly without the rule.
"""

from __future__ import annotations

import pytest

from proxy.metering.media import (
    OperationOutcome,
    VideoRequest,
    file_name,
    images_returned,
    operation_outcome,
    video_request,
)

PNG = "iVBORw0KGgo="
DONE = {
    "name": "models/veo-3.1-generate-preview/operations/abc",
    "done": True,
    "response": {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
        "PredictLongRunningResponse",
        "generateVideoResponse": {
            "generatedSamples": [
                {
                    "video": {
                        "uri": "https://generativelanguage.googleapis.com/v1beta/files/"
                        "3j6svp4106e7:download?alt=media"
                    }
                },
                {"video": {"uri": "files/second1"}},
            ],
            "raiMediaFilteredCount": 1,
        },
    },
}


def test_images_count_only_entries_with_an_image():
    predictions = [
        {"bytesBase64Encoded": PNG, "mimeType": "image/png"},
        {"bytes_base64_encoded": PNG},
        {"gcsUri": "gs://bucket/x.png"},
        # filtered by the safety filter: not returned, not billed
        {"raiFilteredReason": "blocked"},
        # the prompt's safety attributes: not an image
        {"safetyAttributes": {"categories": [], "scores": []}, "contentType": "Positive Prompt"},
        "junk",
        {"bytesBase64Encoded": None},
    ]
    assert images_returned({"predictions": predictions}) == 3
    assert images_returned({"predictions": []}) == 0


@pytest.mark.parametrize("payload", [None, [], {}, {"predictions": "x"}, {"error": {}}])
def test_a_response_without_predictions_is_no_count(payload: object):
    assert images_returned(payload) is None


def test_video_request_reads_both_spellings_and_strings():
    body = {"parameters": {"durationSeconds": "6", "sampleCount": 2, "resolution": "4K"}}
    assert video_request(body) == VideoRequest(seconds=6, videos=2, resolution="4k")
    snake = {"parameters": {"duration_seconds": 4, "sample_count": "3"}}
    assert video_request(snake) == VideoRequest(seconds=4, videos=3, resolution="720p")


def test_video_request_defaults_are_googles_and_unreadable_is_flagged():
    # Google's Veo guide: 8 seconds, one video, 720p when the request says nothing
    assert video_request({"instances": [{"prompt": "x"}]}) == VideoRequest(8, 1, "720p")
    assert video_request(None) == VideoRequest(8, 1, "720p")
    for bad in (True, -4, 0, 4.5, "eight", 10_000):
        request = video_request({"parameters": {"durationSeconds": bad}})
        assert (request.seconds, request.defaulted) == (8, True)


def test_video_request_round_trips_through_state():
    request = VideoRequest(seconds=6, videos=2, resolution="1080p")
    assert VideoRequest.from_state(request.to_state()) == request
    assert VideoRequest.from_state(None) == VideoRequest(defaulted=True)
    assert VideoRequest.from_state({"seconds": "x"}).defaulted is True


def test_done_operation_lists_its_videos():
    outcome = operation_outcome(DONE)
    assert outcome == OperationOutcome(
        name="models/veo-3.1-generate-preview/operations/abc",
        done=True,
        videos=("files/3j6svp4106e7", "files/second1"),
        filtered=1,
    )
    assert outcome.generated == 2


def test_a_sample_without_a_file_is_still_generated():
    payload = {
        "done": True,
        "response": {
            "generateVideoResponse": {"generatedSamples": [{"video": {"encodedVideo": "AAAA"}}]}
        },
    }
    outcome = operation_outcome(payload)
    assert (outcome.videos, outcome.unreadable, outcome.generated) == ((), 1, 1)


def test_running_failed_and_malformed_operations():
    assert operation_outcome({"name": "models/m/operations/x"}) == OperationOutcome(
        name="models/m/operations/x"
    )
    # done is only true when it says so
    assert operation_outcome({"done": "true"}).done is False
    failed = operation_outcome({"done": True, "error": {"code": 13, "message": "x"}})
    assert (failed.done, failed.failed, failed.generated) == (True, True, 0)
    assert operation_outcome({"done": True}).malformed is True
    assert operation_outcome([]).malformed is True
    # all filtered: done, nothing generated (proto3 JSON leaves the empty list out)
    empty = operation_outcome(
        {"done": True, "response": {"generateVideoResponse": {"raiMediaFilteredCount": 1}}}
    )
    assert (empty.generated, empty.filtered, empty.malformed) == (0, 1, False)
    assert operation_outcome(
        {"done": True, "response": {"generateVideoResponse": {"generatedSamples": {}}}}
    ).malformed


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        (
            "https://generativelanguage.googleapis.com/v1beta/files/abc123:download?alt=media",
            "files/abc123",
        ),
        ("files/ABC", "files/abc"),
        ("/v1/files/x9", "files/x9"),
        ("https://example.com/video.mp4", None),
        (None, None),
    ],
)
def test_file_name(uri: object, name: str | None):
    assert file_name(uri) == name
