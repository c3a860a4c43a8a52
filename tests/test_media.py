"""Imagen and Veo end to end: through the proxy, on both databases.

google-genai 3.6.1 creates images and videos only on Vertex AI: on the Developer
API ``models.generate_images`` / ``generate_videos`` raise before sending anything
(``test_the_sdk_creates_no_media_on_the_developer_api`` pins that). So creates go
over REST, in the shape of Google's guides (``instances[].prompt``,
``parameters``); the SDK polls (``client.aio.operations.get``) and downloads
(``client.aio.files.download``), as a client would.

Expected figures come from the emulator's ledger (``EmulatorState.media``: the
images and video seconds it served) and from the catalog's prices, worked by hand
in each test: Imagen 4 $0.04 per image, Imagen 4 Fast $0.02; Veo 3.1 $0.40 per
second at 720p and 1080p, $0.60 at 4k; Veo 3.1 Fast $0.10 (720p) / $0.12 (1080p)
from 2026-03-31.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from google.genai import types

from proxy.emulator import EmulatorConfig
from proxy.emulator.media import video_bytes
from proxy.server.keys import fingerprint
from proxy.server.typedefs import budgets_key
from tests.factories import (
    RecordingUpstream,
    Stack,
    StackFactory,
    add_budget,
    add_spend,
    gemini_error,
    raw,
    sqlite_only,
)

IMAGEN = "imagen-4.0-generate-001"
VEO = "veo-3.1-generate-preview"
VEO_FAST = "veo-3.1-fast-generate-preview"


async def predict(
    stack: Stack, model: str, parameters: dict[str, Any], user: str = "alice", **headers: str
) -> tuple[int, Any]:
    status, _, body = await raw(
        "POST",
        stack.url(f"/v1beta/models/{model}:predict"),
        headers=stack.headers(user, **headers),
        json={"instances": [{"prompt": "a watercolour fox"}], "parameters": parameters},
    )
    return status, json.loads(body)


async def start_video(
    stack: Stack, model: str, parameters: dict[str, Any], user: str = "alice", **headers: str
) -> tuple[int, Any]:
    status, _, body = await raw(
        "POST",
        stack.url(f"/v1beta/models/{model}:predictLongRunning"),
        headers=stack.headers(user, **headers),
        json={"instances": [{"prompt": "a fox running in snow"}], "parameters": parameters},
    )
    return status, json.loads(body)


async def poll_until_done(
    stack: Stack, name: str, user: str = "alice", *, seen_running: bool = False
) -> Any:
    client = stack.sdk(user)
    operation = types.GenerateVideosOperation.model_validate({"name": name})
    polls = 0
    while not operation.done:
        operation = await client.aio.operations.get(operation)
        polls += 1
        if not operation.done:
            await asyncio.sleep(0.05)
    if seen_running:
        assert polls >= 2, "the operation should have been seen running first"
    return operation


def test_the_sdk_creates_no_media_on_the_developer_api():
    # Why the creates below are REST calls: the pinned SDK refuses before any request.
    from google import genai

    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url="http://x"))
    only_vertex = "only supported in Gemini Enterprise Agent Platform"
    # generate_images also warns that it is deprecated in favour of image models
    with pytest.warns(Warning, match="generate_images method is deprecated"):
        with pytest.raises(ValueError, match=only_vertex):
            client.models.generate_images(model=IMAGEN, prompt="a fox")
    with pytest.raises(ValueError, match=only_vertex):
        client.models.generate_videos(model=VEO, source=types.GenerateVideosSource(prompt="x"))


# --- Imagen ---------------------------------------------------------------------------


async def test_imagen_bills_the_images_returned_not_the_filtered_ones(stack: Stack):
    parameters = {"sampleCount": 4, "includeRaiReason": True, "includeSafetyAttributes": True}
    status, body = await predict(stack, IMAGEN, parameters, **{"x-emulator-filtered": "1"})
    assert status == 200
    # relayed as served: 3 images, 1 filtered entry, 1 prompt description
    assert len(body["predictions"]) == 5

    [record] = await stack.records()
    served = stack.upstream.media.images_served(IMAGEN)
    assert served == 3
    assert record["endpoint"] == "predict"
    assert record["model"] == IMAGEN
    assert record["user_id"] == await stack.user_id("alice")
    assert record["images"] == served
    assert record["input_tokens"] == record["output_tokens"] == 0
    assert record["parse_error"] is False
    # 3 images x $0.04 = $0.12
    assert record["cost_usd"] == Decimal("0.12")
    assert record["cost_media_usd"] == Decimal("0.12")


async def test_imagen_default_sample_count_and_an_unreadable_answer(stack: Stack):
    status, _ = await predict(stack, "imagen-4.0-fast-generate-001", {})
    assert status == 200
    status, _ = await predict(stack, IMAGEN, {"sampleCount": 9})  # Google refuses: 400
    assert status == 400
    first, refused = await stack.records()
    # Google's default is 4 images: 4 x $0.02 = $0.08
    assert first["images"] == 4 == stack.upstream.media.images_served()
    assert first["cost_usd"] == Decimal("0.08")
    assert (refused["upstream_status"], refused["images"]) == (400, 0)
    assert refused["cost_usd"] == 0


# --- Veo --------------------------------------------------------------------------------


async def test_a_video_is_billed_once_when_first_seen_done_and_downloaded(
    make_stack: StackFactory,
):
    # running long enough for the SDK's first poll to see it running, on any database
    stack = await make_stack(EmulatorConfig(background_seconds=1.0))
    status, created = await start_video(
        stack, VEO, {"durationSeconds": 6, "sampleCount": 2, "resolution": "1080p"}
    )
    assert status == 200
    name = created["name"]
    assert await stack.records() == []  # the create bills nothing yet

    operation = await poll_until_done(stack, name, seen_running=True)
    client = stack.sdk("alice")
    for _ in range(3):  # polled again and again: still one bill
        again = await client.aio.operations.get(
            types.GenerateVideosOperation.model_validate({"name": name})
        )
        assert again.done
    assert operation.result is not None and operation.result.generated_videos is not None
    videos = operation.result.generated_videos
    assert len(videos) == 2
    data = await client.aio.files.download(file=videos[0])
    assert data == video_bytes(name)

    [record] = await stack.records()
    seconds = stack.upstream.media.video_seconds(VEO)
    assert seconds == 12  # 6 seconds x 2 videos, as the emulator served them
    assert record["endpoint"] == "predict_long_running"
    assert record["resource"] == name
    assert record["model"] == VEO
    assert record["user_id"] == await stack.user_id("alice")
    assert record["video_seconds"] == seconds
    assert record["modalities"] == {"video_seconds": {"1080p": 12}}
    assert (record["estimated"], record["parse_error"]) == (False, False)
    # 12 seconds x $0.40 (1080p) = $4.80
    assert record["cost_usd"] == record["cost_media_usd"] == Decimal("4.80")


async def test_resolution_prices_and_defaults(stack: Stack):
    _, four_k = await start_video(stack, VEO, {"durationSeconds": 8, "resolution": "4k"})
    _, fast = await start_video(stack, VEO_FAST, {"resolution": "1080p"})
    _, default = await start_video(stack, VEO_FAST, {"durationSeconds": "4"})
    for created in (four_k, fast, default):
        await poll_until_done(stack, created["name"])
    records = {r["resource"]: r for r in await stack.records()}
    assert len(records) == 3
    # 8 s x $0.60 (4k) = $4.80
    assert records[four_k["name"]]["cost_usd"] == Decimal("4.80")
    # Google's default duration, 8 s, x $0.12 (Fast, 1080p) = $0.96
    assert records[fast["name"]]["video_seconds"] == 8
    assert records[fast["name"]]["cost_usd"] == Decimal("0.96")
    # "4" seconds (a string, as proto JSON allows) at the default 720p: 4 x $0.10 = $0.40
    assert records[default["name"]]["modalities"] == {"video_seconds": {"720p": 4}}
    assert records[default["name"]]["cost_usd"] == Decimal("0.40")
    assert sum(r["video_seconds"] for r in records.values()) == stack.upstream.media.video_seconds()


async def test_failed_and_filtered_videos_bill_nothing(stack: Stack):
    _, failed = await start_video(
        stack, VEO, {"sampleCount": 1}, **{"x-emulator-operation-error": "500"}
    )
    _, filtered = await start_video(
        stack, VEO, {"durationSeconds": 4, "sampleCount": 2}, **{"x-emulator-filtered": "1"}
    )
    failed_op = await poll_until_done(stack, failed["name"])
    assert failed_op.error is not None
    await poll_until_done(stack, filtered["name"])
    records = {r["resource"]: r for r in await stack.records()}
    # a failed operation: recorded, with nothing billed
    assert records[failed["name"]]["video_seconds"] == 0
    assert records[failed["name"]]["cost_usd"] == 0
    # one video of two generated: 4 s x $0.40 = $1.60
    assert records[filtered["name"]]["video_seconds"] == 4 == stack.upstream.media.video_seconds()
    assert records[filtered["name"]]["cost_usd"] == Decimal("1.60")


async def test_a_teammate_polls_and_the_creator_is_billed(make_stack: StackFactory):
    stack = await make_stack(interaction_sharing="team")
    _, created = await start_video(stack, VEO, {"durationSeconds": 4})
    await poll_until_done(stack, created["name"], user="carol")  # alice's team
    [record] = await stack.records()
    assert record["user_id"] == await stack.user_id("alice")


async def test_a_second_replica_does_not_bill_the_operation_again(
    stack: Stack, make_stack: StackFactory
):
    _, created = await start_video(stack, VEO, {"durationSeconds": 4})
    await poll_until_done(stack, created["name"])
    # a second proxy on the same database and upstream, polling the same operation
    other = await make_stack(upstream=stack.settings.upstream)
    client = other.sdk("alice")
    again = await client.aio.operations.get(
        types.GenerateVideosOperation.model_validate({"name": created["name"]})
    )
    assert again.done
    await stack.records()
    [record] = await other.records()  # both writers flushed: one bill in the database
    assert record["resource"] == created["name"]


async def test_passthrough_bills_the_creator_from_the_stored_request(make_stack: StackFactory):
    # No owners are checked, but the request is still kept for the bill.
    stack = await make_stack(auth_mode="passthrough", passthrough_aliases={})
    creator, poller = {"x-goog-api-key": "AIza-creator"}, {"x-goog-api-key": "AIza-poller"}
    status, _, body = await raw(
        "POST",
        stack.url(f"/v1beta/models/{VEO}:predictLongRunning"),
        headers=creator,
        json={"instances": [{"prompt": "x"}], "parameters": {"durationSeconds": 6}},
    )
    assert status == 200
    name = json.loads(body)["name"]
    await asyncio.sleep(0.35)
    for _ in range(2):
        status, _, _ = await raw("GET", stack.url(f"/v1beta/{name}"), headers=poller)
        assert status == 200
    [record] = await stack.records()
    # 6 s x $0.40 (720p) = $2.40, the creator's
    assert (record["video_seconds"], record["estimated"]) == (6, False)
    assert record["cost_usd"] == Decimal("2.40")
    assert record["user_id"] == await stack.user_id(fingerprint(b"test-secret", "AIza-creator"))


# --- budgets ----------------------------------------------------------------------------


async def test_media_creates_are_refused_on_an_exhausted_budget(make_stack: StackFactory):
    stack = await make_stack(budget_refresh_seconds=3600.0)
    await add_budget(stack.app, "user:alice", limit_usd="1.00")
    await add_spend(stack.app, "alice", "0.90")
    await stack.app[budgets_key].refresh()
    # 4 default images x $0.04 = $0.16 over the $0.10 left
    status, body = await predict(stack, IMAGEN, {})
    assert status == 429
    # 8 s x $0.40 = $3.20 over the $0.10 left
    status, body = await start_video(stack, VEO, {})
    assert status == 429
    gemini_error(json.dumps(body).encode(), 429, "RESOURCE_EXHAUSTED")
    assert stack.upstream.media.images == [] and not stack.upstream.media.operations
    # one image ($0.04) fits
    status, _ = await predict(stack, "imagen-4.0-fast-generate-001", {"sampleCount": 1})
    assert status == 200


# --- isolation --------------------------------------------------------------------------


async def _alices_video(
    make_stack: StackFactory, upstream: RecordingUpstream
) -> tuple[Stack, str, str]:
    """A proxy on the recording upstream, alice's done operation and its video's file id."""
    stack = await make_stack(upstream=upstream.url)
    status, created = await start_video(stack, VEO, {"durationSeconds": 4})
    assert status == 200
    name = created["name"]
    status, _, body = await raw("GET", stack.url(f"/v1beta/{name}"), headers=stack.headers())
    assert status == 200
    uri = json.loads(body)["response"]["generateVideoResponse"]["generatedSamples"][0]
    file_id = uri["video"]["uri"].split("/files/")[1].split(":")[0]
    upstream.received.clear()
    return stack, name, file_id


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/v1beta/{name}"),
        ("GET", "/v1/{name}"),
        ("GET", "/v1alpha/{name}/"),
        ("GET", "/v1beta/{name}?alt=json"),
        ("GET", "/v1beta/{upper}"),
        ("POST", "/v1beta/{name}:cancel"),
        ("DELETE", "/v1beta/{name}"),
        ("GET", "/v1beta/files/{file}:download?alt=media"),
        ("GET", "/v1/files/{file}:download?alt=media"),
    ],
)
async def test_another_user_never_reaches_alices_operation_or_video(
    make_stack: StackFactory, recording_upstream: RecordingUpstream, method: str, template: str
):
    stack, name, file_id = await _alices_video(make_stack, recording_upstream)
    upper = name.replace("models/", "Models/").replace("/operations/", "/Operations/")
    path = template.format(name=name, upper=upper, file=file_id)
    status, _, body = await raw(method, stack.url(path), headers=stack.headers("bob"))
    assert status == 404, body
    gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    # alice herself still reaches it, in the canonical spelling
    if "{upper}" not in template:
        status, _, _ = await raw(method, stack.url(path), headers=stack.headers("alice"))
        assert status == 200
        assert len(recording_upstream.received) == 1


async def test_another_user_cannot_extend_alices_video(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack, _, file_id = await _alices_video(make_stack, recording_upstream)
    for uri in (
        f"https://generativelanguage.googleapis.com/v1beta/files/{file_id}:download?alt=media",
        f"files/{file_id}",
    ):
        body = {"instances": [{"prompt": "go on", "video": {"uri": uri}}]}
        status, _, answer = await raw(
            "POST",
            stack.url(f"/v1beta/models/{VEO}:predictLongRunning"),
            headers=stack.headers("bob"),
            json=body,
        )
        assert status == 404, answer
    assert recording_upstream.received == []
    # alice extends her own
    body = {"instances": [{"prompt": "go on", "video": {"uri": f"files/{file_id}"}}]}
    status, _, _ = await raw(
        "POST",
        stack.url(f"/v1beta/models/{VEO}:predictLongRunning"),
        headers=stack.headers("alice"),
        json=body,
    )
    assert status == 200
    assert len(recording_upstream.received) == 1


@sqlite_only
async def test_listing_operations_is_refused(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    for path in (f"/v1beta/models/{VEO}/operations", f"/v1beta/models/{VEO}/operations/x:wait"):
        method = "POST" if path.endswith(":wait") else "GET"
        status, _, body = await raw(method, stack.url(path), headers=stack.headers("alice"))
        assert status == 405, body
    assert recording_upstream.received == []


@sqlite_only
async def test_an_operation_never_created_here_is_404(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    status, _, body = await raw(
        "GET", stack.url(f"/v1beta/models/{VEO}/operations/made-up"), headers=stack.headers()
    )
    assert status == 404, body
    assert recording_upstream.received == []
