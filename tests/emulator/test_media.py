"""The emulator's Imagen and Veo endpoints, over raw HTTP and through the real SDK.

Expected shapes are those the google-genai SDK's Developer API converters read
(``proxy/emulator/media.py`` cites them): ``predictions[]`` of
``bytesBase64Encoded``/``mimeType`` or ``raiFilteredReason``; an operation
``{"name"}`` polled until ``done`` with
``response.generateVideoResponse.generatedSamples[].video.uri``. google-genai 3.6.1
no longer creates images or videos on the Developer API (``generate_images`` and
``generate_videos`` raise "only supported in Gemini Enterprise Agent Platform"), so
creates go over REST, as Google's guides show them; the SDK polls
(``operations.get``) and downloads (``files.download``).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import types

from proxy.emulator import EmulatorConfig, create_emulator_app, emulator_state_key
from proxy.emulator.media import video_bytes

KEY = {"x-goog-api-key": "test-key"}
VEO = "veo-3.1-generate-preview"
IMAGEN = "imagen-4.0-generate-001"


@pytest.fixture
async def server(aiohttp_server: Any) -> TestServer:
    app = create_emulator_app(EmulatorConfig(background_seconds=0.3))
    return await aiohttp_server(app)  # type: ignore[no-any-return]


async def call(
    server: TestServer, method: str, path: str, body: object = None, **headers: str
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.make_url(path), json=body, headers={**KEY, **headers}
        ) as response,
    ):
        return response.status, await response.json()


def sdk(server: TestServer, session: aiohttp.ClientSession) -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(
            base_url=str(server.make_url("")).rstrip("/"), aiohttp_client=session
        ),
    )


async def test_predict_returns_the_default_four_images(server: TestServer):
    status, body = await call(
        server, "POST", f"/v1beta/models/{IMAGEN}:predict", {"instances": [{"prompt": "a cat"}]}
    )
    assert status == 200
    assert len(body["predictions"]) == 4
    for prediction in body["predictions"]:
        assert set(prediction) == {"bytesBase64Encoded", "mimeType"}
        assert base64.b64decode(prediction["bytesBase64Encoded"]).startswith(b"\x89PNG")
    [served] = server.app[emulator_state_key].media.images
    assert (served.model, served.images, served.filtered) == (IMAGEN, 4, 0)


async def test_predict_filters_and_describes_the_prompt(server: TestServer):
    body = {
        "instances": [{"prompt": "a cat"}],
        "parameters": {
            "sampleCount": 3,
            "includeRaiReason": True,
            "includeSafetyAttributes": True,
            "outputOptions": {"mimeType": "image/jpeg"},
        },
    }
    status, answer = await call(
        server, "POST", f"/v1/models/{IMAGEN}:predict", body, **{"x-emulator-filtered": "1"}
    )
    assert status == 200
    images = [p for p in answer["predictions"] if "bytesBase64Encoded" in p]
    filtered = [p for p in answer["predictions"] if "raiFilteredReason" in p]
    prompt = [p for p in answer["predictions"] if p.get("contentType") == "Positive Prompt"]
    assert len(images) == 2 and len(filtered) == 1 and len(prompt) == 1
    assert len(answer["predictions"]) == 4  # two images, a filtered one, the prompt
    assert all(p["mimeType"] == "image/jpeg" for p in images)
    assert server.app[emulator_state_key].media.images_served(IMAGEN) == 2


async def test_filtered_images_without_rai_reason_are_simply_missing(server: TestServer):
    body = {"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": "2"}}
    status, answer = await call(
        server, "POST", f"/v1beta/models/{IMAGEN}:predict", body, **{"x-emulator-filtered": "2"}
    )
    assert status == 200 and answer == {"predictions": []}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"instances": []}, {}),
        ({"instances": [{"prompt": "x"}], "parameters": {"sampleCount": 5}}, {}),
        ({"instances": [{"prompt": "x"}], "parameters": {"sampleCount": True}}, {}),
        ({"instances": [{"prompt": "x"}]}, {"x-emulator-filtered": "9"}),
    ],
)
async def test_predict_refuses_what_google_refuses(
    server: TestServer, body: object, headers: dict[str, str]
):
    status, answer = await call(server, "POST", f"/v1beta/models/{IMAGEN}:predict", body, **headers)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"


async def test_video_operation_polled_with_the_sdk_and_downloaded(server: TestServer):
    body = {
        "instances": [{"prompt": "a cat"}],
        "parameters": {"durationSeconds": 6, "sampleCount": 2, "resolution": "1080p"},
    }
    async with aiohttp.ClientSession() as session:
        # The client first: made after the operation, on a loaded machine it can take
        # longer than the operation's 0.2 s, and the first poll would find it done.
        client = sdk(server, session)
        status, created = await call(
            server, "POST", f"/v1beta/models/{VEO}:predictLongRunning", body
        )
        assert status == 200
        name = created["name"]
        assert name.startswith(f"models/{VEO}/operations/") and set(created) == {"name"}
        operation = types.GenerateVideosOperation.model_validate({"name": name})
        operation = await client.aio.operations.get(operation)
        assert not operation.done
        while not operation.done:
            await asyncio.sleep(0.02)
            operation = await client.aio.operations.get(operation)
        assert operation.error is None
        assert operation.result is not None and operation.result.generated_videos is not None
        videos = operation.result.generated_videos
        assert len(videos) == 2
        assert videos[0].video is not None and videos[0].video.uri is not None
        # Google's own host and the SDK's API version (v1 by default)
        assert videos[0].video.uri.startswith("https://generativelanguage.googleapis.com/v1/files/")
        data = await client.aio.files.download(file=videos[0])
        assert data == video_bytes(name)
        await client.aio.aclose()
    # 6 seconds x 2 videos
    assert server.app[emulator_state_key].media.video_seconds(VEO) == 12


async def test_failed_and_filtered_operations_generate_what_they_say(server: TestServer):
    body = {"instances": [{"prompt": "a cat"}], "parameters": {"sampleCount": 2}}
    _, failed = await call(
        server,
        "POST",
        f"/v1beta/models/{VEO}:predictLongRunning",
        body,
        **{"x-emulator-operation-error": "500"},
    )
    _, filtered = await call(
        server,
        "POST",
        f"/v1beta/models/{VEO}:predictLongRunning",
        body,
        **{"x-emulator-filtered": "1"},
    )
    await asyncio.sleep(0.35)
    _, failed_done = await call(server, "GET", f"/v1beta/{failed['name']}")
    assert failed_done["done"] is True and failed_done["error"]["code"] == 13
    assert "response" not in failed_done
    _, filtered_done = await call(server, "GET", f"/v1beta/{filtered['name']}")
    video_response = filtered_done["response"]["generateVideoResponse"]
    assert len(video_response["generatedSamples"]) == 1
    assert video_response["raiMediaFilteredCount"] == 1
    # default duration 8 s, one video generated of two; nothing for the failed one
    assert server.app[emulator_state_key].media.video_seconds() == 8


async def test_unknown_operation_is_404_and_unknown_file_403(server: TestServer):
    status, body = await call(server, "GET", f"/v1beta/models/{VEO}/operations/nope")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    # a missing file is 403, as Google answers it (proxy/emulator/files.py)
    status, body = await call(server, "GET", "/v1beta/files/nope:download?alt=media")
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
