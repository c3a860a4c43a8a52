"""The emulator's Batch API, driven by the real google-genai SDK and by raw HTTP.

Each result must be what generateContent answers for the same request (the emulator
is deterministic), in the shapes the SDK parses and Google's recorded responses show
(see ``proxy/emulator/batches.py`` for the sources).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors, types

from proxy.emulator import EmulatorConfig, create_emulator_app, emulator_state_key
from tests.factories import batch_request

KEY = {"x-goog-api-key": "test-key"}
MODEL = "gemini-2.5-flash"
BATCH_SECONDS = 0.3
JOKE = "Tell me a one-sentence joke."
SKY = "Why is the sky blue?"
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"


@pytest.fixture
async def server(aiohttp_server: Any, request: pytest.FixtureRequest) -> TestServer:
    # A test may ask for longer batches (indirect parametrization) to see a state's window.
    seconds = getattr(request, "param", BATCH_SECONDS)
    started: TestServer = await aiohttp_server(
        create_emulator_app(EmulatorConfig(batch_seconds=seconds))
    )
    return started


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(server: TestServer, http: aiohttp.ClientSession) -> AsyncIterator[genai.Client]:
    sdk = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=str(server.make_url("")), aiohttp_client=http),
    )
    yield sdk
    await sdk.aio.aclose()
    sdk.close()


async def call(
    http: aiohttp.ClientSession, server: TestServer, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, server.make_url(path), json=body, headers=KEY) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if r.content_type == "application/json" else raw


async def done(client: genai.Client, name: str) -> types.BatchJob:
    for _ in range(100):
        job = await client.aio.batches.get(name=name)
        if job.done:
            return job
        await asyncio.sleep(BATCH_SECONDS / 6)
    raise AssertionError("the batch never finished")


# RUNNING lasts the second half of a batch: 1.5 s here, so a poll 1.8 s in still sees it on
# a loaded machine (at 0.3 s, the window was 0.12 s wide past the poll's sleep).
SLOW_BATCH_SECONDS = 3.0


@pytest.mark.parametrize("server", [SLOW_BATCH_SECONDS], indirect=True)
async def test_inline_batch_runs_pending_running_succeeded(
    client: genai.Client, http: aiohttp.ClientSession, server: TestServer
) -> None:
    job = await client.aio.batches.create(
        model=MODEL,
        src=[batch_request(JOKE), batch_request(SKY, "sky")],
        config={"display_name": "two"},
    )
    assert job.name is not None and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "two" and job.model == f"models/{MODEL}"
    assert job.dest is None
    await asyncio.sleep(SLOW_BATCH_SECONDS * 0.6)
    assert (await client.aio.batches.get(name=job.name)).state == types.JobState.JOB_STATE_RUNNING
    finished = await done(client, job.name)
    assert finished.state == types.JobState.JOB_STATE_SUCCEEDED
    assert finished.end_time is not None
    assert finished.dest is not None and finished.dest.inlined_responses is not None
    joke, sky = finished.dest.inlined_responses
    # the same answer and usage as generateContent gives the same request
    for result, text in ((joke, JOKE), (sky, SKY)):
        direct = await client.aio.models.generate_content(model=MODEL, contents=text)
        assert result.response is not None
        assert result.response.text == direct.text
        assert result.response.usage_metadata == direct.usage_metadata
    assert joke.metadata is None and sky.metadata == {"key": "sky"}

    # The raw answer carries the output twice, as Google's recorded responses do.
    status, raw = await call(http, server, "GET", f"/v1beta/{job.name}")
    assert status == 200
    assert raw["done"] is True
    assert raw["metadata"]["@type"] == BATCH_TYPE
    assert raw["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert raw["metadata"]["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
    assert raw["response"] == {"@type": OUTPUT_TYPE, **raw["metadata"]["output"]}
    for item in raw["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]:
        types.GenerateContentResponse.model_validate(item["response"])  # no unknown field

    # The ledger: every result served, each time it was served (the SDK's poll, then ours).
    ledger = server.app[emulator_state_key].batch_ledger
    assert [(s.batch, s.index, s.key, s.via) for s in ledger[-4:]] == [
        (job.name, 0, None, "get"),
        (job.name, 1, "sky", "get"),
        (job.name, 0, None, "get"),
        (job.name, 1, "sky", "get"),
    ]
    assert (
        ledger[-1].usage
        == raw["response"]["inlinedResponses"]["inlinedResponses"][1]["response"]["usageMetadata"]
    )


async def test_file_batch_writes_a_responses_file(
    client: genai.Client, http: aiohttp.ClientSession, server: TestServer
) -> None:
    lines = [
        {"key": "joke", "request": batch_request(JOKE)},
        {"key": "broken", "request": {"contents": []}},
        batch_request(SKY),  # a bare request, as in the guide's REST example
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await client.aio.files.upload(
        file=io.BytesIO(jsonl), config={"mime_type": "jsonl", "display_name": "in"}
    )
    assert uploaded.name is not None
    job = await client.aio.batches.create(model=MODEL, src=uploaded.name)
    assert job.name is not None
    finished = await done(client, job.name)
    assert finished.state == types.JobState.JOB_STATE_SUCCEEDED
    assert finished.dest is not None and finished.dest.inlined_responses is None
    responses_file = finished.dest.file_name
    assert responses_file == f"files/batch-{job.name.split('/')[1]}"

    data = await client.aio.files.download(file=responses_file)
    joke, broken, sky = (json.loads(line) for line in data.splitlines())
    assert joke["key"] == "joke" and set(joke) == {"key", "response"}
    direct = await client.aio.models.generate_content(model=MODEL, contents=JOKE)
    assert types.GenerateContentResponse.model_validate(joke["response"]).text == direct.text
    message = "* GenerateContentRequest.contents: contents is not specified"
    assert broken == {"key": "broken", "error": {"code": 3, "message": message}}
    assert set(sky) == {"response"}
    # the guide's download URL serves the same lines
    status, again = await call(
        http, server, "GET", f"/download/v1beta/{responses_file}:download?alt=media"
    )
    assert status == 200 and again == data
    status, raw = await call(http, server, "GET", f"/v1beta/{job.name}")
    assert raw["metadata"]["inputConfig"] == {"fileName": uploaded.name}
    assert raw["metadata"]["output"] == {"responsesFile": responses_file}
    assert raw["metadata"]["batchStats"] == {
        "requestCount": "3",
        "successfulRequestCount": "2",
        "failedRequestCount": "1",
    }
    ledger = server.app[emulator_state_key].batch_ledger
    assert [(s.index, s.key, s.via, s.error is None) for s in ledger] == [
        (0, "joke", "download", True),
        (1, "broken", "download", False),
        (2, None, "download", True),
    ] * 2


async def test_list_pages_newest_first(client: genai.Client, server: TestServer) -> None:
    names = []
    for text in ("one", "two", "three"):
        job = await client.aio.batches.create(model=MODEL, src=[batch_request(text)])
        names.append(job.name)
    pager = await client.aio.batches.list(config={"page_size": 2})
    listed = [job.name async for job in pager]
    assert listed == names[::-1]
    # two pages: the second asked for with the first's nextPageToken
    pages = [r for r in server.app[emulator_state_key].requests if r.path.endswith("/batches")]
    assert [r.query for r in pages] == [{"pageSize": "2"}, {"pageSize": "2", "pageToken": "2"}]


# Cancelled while PENDING or RUNNING: at 0.3 s, a loaded machine once let the batch finish
# between create and cancel.
@pytest.mark.parametrize("server", [SLOW_BATCH_SECONDS], indirect=True)
async def test_cancel_and_delete(
    client: genai.Client, http: aiohttp.ClientSession, server: TestServer
) -> None:
    job = await client.aio.batches.create(model=MODEL, src=[batch_request(JOKE)])
    assert job.name is not None
    await client.aio.batches.cancel(name=job.name)
    cancelled = await client.aio.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.dest is None
    await client.aio.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as refused:
        await client.aio.batches.get(name=job.name)
    assert refused.value.code == 404
    status, body = await call(http, server, "POST", f"/v1beta/{job.name}:cancel")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("outcome", "state", "code"),
    [("failed", "BATCH_STATE_FAILED", 13), ("expired", "BATCH_STATE_EXPIRED", 4)],
)
async def test_failed_and_expired_batches_have_no_output(
    http: aiohttp.ClientSession, server: TestServer, outcome: str, state: str, code: int
) -> None:
    body = {
        "batch": {"input_config": {"requests": {"requests": [{"request": batch_request(JOKE)}]}}}
    }
    async with http.post(
        server.make_url(f"/v1beta/models/{MODEL}:batchGenerateContent"),
        json=body,
        headers={**KEY, "x-emulator-batch-outcome": outcome},
    ) as r:
        name = (await r.json())["name"]
    await asyncio.sleep(BATCH_SECONDS * 1.2)
    status, raw = await call(http, server, "GET", f"/v1/{name}")
    assert status == 200
    assert raw["metadata"]["state"] == state and raw["done"] is True
    assert raw["error"]["code"] == code
    assert "output" not in raw["metadata"] and "response" not in raw
    assert server.app[emulator_state_key].batch_ledger == []


async def test_bad_requests(http: aiohttp.ClientSession, server: TestServer) -> None:
    path = f"/v1beta/models/{MODEL}:batchGenerateContent"
    status, body = await call(http, server, "POST", path, {"batch": {}})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = await call(
        http, server, "POST", path, {"batch": {"inputConfig": {"fileName": "files/nope"}}}
    )
    assert status == 403  # a missing file, as the Files API answers one
    async with http.post(
        server.make_url(path), json={}, headers={**KEY, "x-emulator-batch-outcome": "maybe"}
    ) as r:
        assert r.status == 400
        assert "x-emulator-batch-outcome" in (await r.json())["error"]["message"]
    status, body = await call(http, server, "GET", "/v1beta/files/batch-x:download?alt=media")
    assert status == 403


async def test_embeddings_batch(client: genai.Client, server: TestServer) -> None:
    with pytest.warns(Warning, match="experimental"):
        created = await client.aio.batches.create_embeddings(
            model="gemini-embedding-001",
            src={"inlined_requests": {"contents": ["abcdefgh", "abc"]}},
        )
    assert created.name is not None
    finished = await done(client, created.name)
    assert finished.state == types.JobState.JOB_STATE_SUCCEEDED
    assert finished.dest is not None
    # the SDK read the results as embeddings, by the embedding in each response
    responses = finished.dest.inlined_embed_content_responses
    assert responses is not None and len(responses) == 2
    ledger = server.app[emulator_state_key].batch_ledger
    # ceil(8 / 4) = 2 and ceil(3 / 4) = 1 tokens, as embedContent counts them
    assert [s.usage["promptTokenCount"] for s in ledger[-2:] if s.usage] == [2, 1]
