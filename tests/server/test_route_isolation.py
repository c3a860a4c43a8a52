"""Routes the proxy does not know: refused with virtual keys, by every spelling, and
forwarded as they came in passthrough mode, where a call on one with any method but GET,
HEAD and OPTIONS is recorded as ``unlisted`` (it may be a model call Google bills).

Behind the shared upstream key such a route would act on the whole organisation's
project for any caller (a tuned model's permissions, corpora, generated files, whatever
Google adds next), unmetered and unowned. Each one is tried against the catch-all
``recording_upstream``: "refused" means the client got Gemini's 404 and nothing reached
the upstream. The routes come from Google's REST reference (ai.google.dev/api: tuning and
its permissions, semantic retrieval, generatedFiles) and the pinned SDKs
(``tests/server/test_routes.py`` lists the SDK calls, with the files they were read from).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from google.genai import errors, types

from proxy.server.auth import PresentedKey
from proxy.server.keys import fingerprint
from proxy.server.typedefs import authenticator_key, budgets_key, metrics_key
from proxy.storage.schema import ResourceKind
from tests.factories import (
    RECORDED_MODEL,
    RECORDED_TUNED_MODEL,
    UPSTREAM_KEY,
    RecordingUpstream,
    Stack,
    StackFactory,
    add_budget,
    add_spend,
    gemini_error,
    metric_sum,
    raw,
    raw_target,
    send_raw,
    sqlite_only,
)

# (method, request target exactly as sent)
UNLISTED = [
    # tuned models: everything but reading them and calling them as models
    ("POST", "/v1beta/tunedModels"),
    ("PATCH", "/v1beta/tunedModels/t-1?updateMask=displayName"),
    ("DELETE", "/v1beta/tunedModels/t-1"),
    ("POST", "/v1beta/tunedModels/t-1:transferOwnership"),
    ("POST", "/v1beta/tunedModels/t-1/permissions"),
    ("GET", "/v1beta/tunedModels/t-1/permissions"),
    ("PATCH", "/v1beta/tunedModels/t-1/permissions/p-1"),
    ("DELETE", "/v1/tunedModels/t-1/permissions/p-1"),
    # Semantic Retrieval, all of it
    ("POST", "/v1alpha/corpora"),
    ("GET", "/v1beta/corpora?pageSize=10"),
    ("POST", "/v1beta/corpora/c-1:query"),
    ("GET", "/v1beta/corpora/c-1/documents/d-1/chunks"),
    ("POST", "/v1beta/corpora/c-1/permissions"),
    # generated files, their operations included (every user's behind the shared key)
    ("GET", "/v1beta/generatedFiles"),
    ("GET", "/v1beta/generatedFiles/g-1/operations/o-1"),
    # surfaces of the SDK nobody owns here, and whatever Google adds next
    ("POST", "/v1beta/webhooks"),
    ("GET", "/v1beta/openai/files"),
    ("POST", "/v1beta/aCollectionGoogleAddsTomorrow"),
    # model calls the meter does not read (google-genai 3.6.1's client.decisions), or a
    # method Google adds tomorrow
    ("POST", "/v1beta/decisions"),
    ("POST", "/v1beta/somethingNew:run"),
    # Live Interactions' WebSocket (google-genai 3.6.1 ``_interactions_websocket``), which
    # the proxy neither relays nor meters yet: not an interaction named "live"
    ("GET", "/v1beta/interactions/live"),
    ("GET", "/v1alpha/Interactions/LIVE/"),
    # every spelling: the /upload/ and /download/ prefixes, case, a trailing slash, a
    # query, percent-encoded characters (the path is classified as decoded)
    ("POST", "/upload/v1beta/tunedModels"),
    ("DELETE", "/download/v1beta/tunedModels/t-1"),
    ("POST", "/v1beta/TunedModels/t-1:transferOwnership"),
    ("GET", "/v1beta/CORPORA"),
    ("GET", "/v1beta/corpora/"),
    ("DELETE", "/v1beta/tunedModels/t-1/"),
    ("GET", "/v1beta/generatedFiles?alt=json&pageSize=1"),
    ("GET", "/v1beta/%63orpora"),
    ("POST", "/v1beta/tunedModels/t-1%3AtransferOwnership"),
    ("GET", "/v1beta/tuned%4Dodels/t-1/permissions"),
]


@sqlite_only
async def test_unlisted_routes_are_refused_with_virtual_keys(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    for method, target in UNLISTED:
        # the same answer with a key and without one: refused before the key is read
        for user in ("bob", None):
            status, body = await raw_target(stack, method, target, user)
            assert status == 404, (method, target, user)
            message = gemini_error(body, 404, "NOT_FOUND")
            assert "not offered through Gemini Meter" in message, message
    assert recording_upstream.received == []
    assert await stack.records() == []


@sqlite_only
@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("POST", "/v1beta/tunedModels/t-1", {"X-HTTP-Method-Override": "DELETE"}),
        ("GET", "/v1beta/tunedModels/t-1", {"X-HTTP-Method-Override": "PATCH"}),
        ("GET", "/v1beta/models", {"X-Method-Override": "POST"}),
        ("POST", "/v1beta/tunedModels/t-1?$httpMethod=DELETE", {}),
        ("GET", "/v1beta/tunedModels/t-1/permissions?httpMethod=POST", {}),
    ],
)
async def test_a_method_override_cannot_reach_an_unlisted_method(
    make_stack: StackFactory,
    recording_upstream: RecordingUpstream,
    method: str,
    target: str,
    headers: dict[str, str],
):
    # Google applies the override: a GET of a tuned model could delete it. The edge refuses
    # every override before the route is even looked at.
    stack = await make_stack(upstream=recording_upstream.url)
    status, _, body = await raw(method, stack.url(target), headers=stack.headers("bob", **headers))
    assert status == 400
    assert "method override" in gemini_error(body, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


@sqlite_only
async def test_encoded_separators_cannot_spell_an_unlisted_route(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    for target in (
        "/v1beta/tunedModels%2Ft-1/permissions",
        "/v1beta/models/x/%2E%2E/%2E%2E/corpora",
        "/v1beta/tunedModels/t-1%252Fpermissions",
    ):
        status, body = await raw_target(stack, "GET", target, "bob")
        assert status == 400, target
        assert "canonical" in gemini_error(body, 400, "INVALID_ARGUMENT")
    assert recording_upstream.received == []


async def test_unlisted_routes_are_forwarded_in_passthrough_mode(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Each client's own Google key goes upstream: isolation is Google's, and the route
    # reaches it exactly as sent.
    stack = await make_stack(upstream=recording_upstream.url, auth_mode="passthrough")
    for method, target in UNLISTED:
        status, _ = await raw_target(stack, method, target, "bob")
        assert status == 200, (method, target)
    received = recording_upstream.received
    assert [(r.method, r.raw_path) for r in received] == UNLISTED
    assert {r.headers["x-goog-api-key"] for r in received} == {stack.keys["bob"]}
    # a read relayed, not recorded, but for the poll of an operation (UNMETERED_ROUTES);
    # every other method recorded as "unlisted": it may be a model call Google bills
    expected = [
        "operation.get" if "/operations/" in target else "unlisted"
        for method, target in UNLISTED
        if method != "GET" or "/operations/" in target
    ]
    assert [r["endpoint"] for r in await stack.records()] == expected


@sqlite_only
async def test_free_reads_reach_the_upstream_with_virtual_keys(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    targets = [
        "/v1beta/models?pageSize=5",
        "/v1/models/gemini-2.5-flash",
        "/v1beta/Models/gemini-2.5-flash/",
        "/v1beta/tunedModels",
        "/v1alpha/TUNEDMODELS/t-1",
        "/v1beta/openai/models",
        "/v1beta/openai/models/gemini-2.5-flash",
        # a tuned model's tuning, as readable as the tuned model; recorded unmetered
        "/v1beta/tunedModels/t-1/operations/o-1",
    ]
    for target in targets:
        status, _ = await raw_target(stack, "GET", target, "bob")
        assert status == 200, target
    assert recording_upstream.paths() == targets
    assert {r.headers["x-goog-api-key"] for r in recording_upstream.received} == {UPSTREAM_KEY}
    assert [r["endpoint"] for r in await stack.records()] == ["operation.get"]


async def test_the_sdk_reads_models_and_tuned_models_and_cannot_change_them(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # google-genai 3.6.1 in Gemini Developer API mode, under its default version "v1"
    # (_api_client.GOOGLE_AI_API_DEFAULT_VERSION): models.list reads "models" (or
    # "tunedModels" with query_base=False), models.get and tunings.get read "{name}"
    # (models.py, tunings.py); models.update and models.delete PATCH and DELETE "{name}",
    # tunings.tune POSTs "tunedModels" (tunings.py, _tune_mldev).
    stack = await make_stack(upstream=recording_upstream.url)
    client = stack.sdk("bob").aio
    listed = [m.name async for m in await client.models.list()]
    model = await client.models.get(model="gemini-2.5-flash")
    tuned = [m.name async for m in await client.models.list(config={"query_base": False})]
    tuned_model = await client.models.get(model="tunedModels/rec-tuned-1")
    job = await client.tunings.get(name="tunedModels/rec-tuned-1")

    assert listed == [RECORDED_MODEL["name"]]
    assert (model.name, model.input_token_limit) == ("models/gemini-2.5-flash", 1048576)
    assert tuned == [RECORDED_TUNED_MODEL["name"]]
    assert (tuned_model.name, tuned_model.display_name) == ("tunedModels/rec-tuned-1", "rec tuned")
    # the SDK's own reading of a tuned model's ACTIVE state (_transformers.t_tuning_job_status)
    assert (job.name, job.state) == ("tunedModels/rec-tuned-1", types.JobState.JOB_STATE_SUCCEEDED)
    received = recording_upstream.received
    assert [(r.method, r.raw_path.partition("?")[0]) for r in received] == [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gemini-2.5-flash"),
        ("GET", "/v1/tunedModels"),
        ("GET", "/v1/tunedModels/rec-tuned-1"),
        ("GET", "/v1/tunedModels/rec-tuned-1"),
    ]
    assert {r.headers["x-goog-api-key"] for r in received} == {UPSTREAM_KEY}
    received.clear()

    refused: list[errors.ClientError] = []
    for change in (
        client.models.update(model="tunedModels/rec-tuned-1", config={"display_name": "mine now"}),
        client.models.delete(model="tunedModels/rec-tuned-1"),
    ):
        with pytest.raises(errors.ClientError) as caught:
            await change
        refused.append(caught.value)
    # (tunings.tune warns that it is experimental once a process, so the warning may or
    # may not come: it is let be either way)
    with warnings.catch_warnings(), pytest.raises(errors.ClientError) as caught:
        warnings.simplefilter("ignore", errors.ExperimentalWarning)
        await client.tunings.tune(
            base_model="models/gemini-1.5-flash-001-tuning",
            training_dataset=types.TuningDataset(
                examples=[types.TuningExample(text_input="1", output="2")]
            ),
        )
    refused.append(caught.value)
    assert [(e.code, e.status) for e in refused] == [(404, "NOT_FOUND")] * 3
    assert received == []
    assert await stack.records() == []


# A client's own Google key in passthrough mode, named "dana" by its fingerprint.
OWN_KEY = "AIza-client-own-google-key"
# google-genai 3.6.1's client.decisions.create body (``_gaos/types/decisions``): a shared
# input, a model and questions keyed by the caller's ids.
DECISION: dict[str, Any] = {
    "input": "The invoice total is 120 EUR.",
    "model": "models/gemini-3.5-flash",
    "questions": {
        "q1": {
            "type": "choice",
            "instructions": "Is the total over 100 EUR?",
            "criteria": {"yes": "over 100", "no": "100 or less"},
        },
    },
}


async def passthrough_stack(
    make_stack: StackFactory, upstream: RecordingUpstream, **overrides: Any
) -> Stack:
    return await make_stack(
        upstream=upstream.url,
        auth_mode="passthrough",
        passthrough_aliases={fingerprint(b"test-secret", OWN_KEY): "dana"},
        **overrides,
    )


async def send_with_own_key(stack: Stack, method: str, target: str, body: bytes) -> int:
    """``raw_target`` with ``OWN_KEY`` (passthrough mode): the target sent exactly as written."""
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"x-goog-api-key: {OWN_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    status, _, _ = await send_raw(stack.proxy.host, stack.proxy.port, request)
    return status


def unmetered_count(stack: Stack, route: str) -> float:
    return metric_sum(
        stack.app[metrics_key].registry, "gemini_meter_unmetered_route_requests_total", route=route
    )


async def test_unlisted_writes_are_recorded_in_passthrough_mode(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # A metering proxy must not let a call Google bills through unseen: the client's own
    # key pays for it, and the record says who called what, and when.
    stack = await passthrough_stack(make_stack, recording_upstream)
    sent = [
        ("POST", "/v1beta/decisions", json.dumps(DECISION, indent=3).encode()),
        ("POST", "/v1beta/somethingNew:run", b'{"x": 1}'),
        ("PUT", "/v1alpha/environments/e-1/files/a.txt", b"bytes"),
        ("DELETE", "/v1/corpora/c-1?force=true", b""),
    ]
    for method, target, body in sent:
        status, _, answer = await raw(
            method, stack.url(target), headers={"x-goog-api-key": OWN_KEY}, data=body
        )
        assert status == 200, (method, target)
        assert json.loads(answer) == {"ok": True}  # relayed as the upstream answered
    received = recording_upstream.received
    assert [(r.method, r.raw_path, r.body) for r in received] == sent
    assert {r.headers["x-goog-api-key"] for r in received} == {OWN_KEY}

    records = await stack.records()
    assert len(records) == len(sent)
    dana = await stack.user_id("dana")
    for record in records:
        assert record["user_id"] == dana
        assert record["key_id"] is None  # passthrough: no key of the proxy's
        assert (record["endpoint"], record["unmetered_route"]) == ("unlisted", True)
        assert record["model"] is None
        assert (record["upstream_status"], record["streamed"]) == (200, False)
        tokens = ("input_tokens", "cached_tokens", "output_tokens", "thinking_tokens")
        assert [record[t] for t in tokens] == [0, 0, 0, 0]
        assert record["total_tokens"] == 0
        # zero tokens are not a zero cost: unknown
        assert (record["cost_usd"], record["unpriced"]) == (None, True)
    # one bounded label value for every path: never the path itself
    assert unmetered_count(stack, "unlisted") == len(sent)
    registry = stack.app[metrics_key].registry
    routes = {
        sample.labels["route"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "gemini_meter_unmetered_route_requests_total"
    }
    assert routes == {"unlisted"}
    assert metric_sum(registry, "gemini_meter_requests_total", endpoint="unlisted") == len(sent)
    assert metric_sum(registry, "gemini_meter_unpriced_records_total") == 0


async def test_an_upstream_refusal_of_an_unlisted_write_is_recorded_with_its_status(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Google's answer to a route it does not serve either: still a call someone made.
    stack = await passthrough_stack(make_stack, recording_upstream)
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/decisions"),
        headers={"x-goog-api-key": OWN_KEY, "x-recorded-status": "404"},
        json=DECISION,
    )
    assert status == 404
    [record] = await stack.records()
    assert (record["endpoint"], record["upstream_status"]) == ("unlisted", 404)
    assert unmetered_count(stack, "unlisted") == 1


async def test_the_sdk_decisions_call_is_recorded_in_passthrough_mode(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # google-genai 3.6.1's client.decisions.create (``_gaos/decisions.py``: POST
    # "/{api_version}/decisions", its default version "v1"), through the proxy with the
    # client's own key.
    stack = await passthrough_stack(make_stack, recording_upstream)
    client = stack.sdk(key=OWN_KEY).aio
    await client.decisions.create(
        input=DECISION["input"], model=DECISION["model"], questions=DECISION["questions"]
    )
    [seen] = recording_upstream.received
    assert (seen.method, seen.raw_path.partition("?")[0]) == ("POST", "/v1/decisions")
    assert json.loads(seen.body)["model"] == DECISION["model"]
    [record] = await stack.records()
    assert (record["endpoint"], record["unmetered_route"]) == ("unlisted", True)
    assert record["user_id"] == await stack.user_id("dana")


async def test_unlisted_reads_are_relayed_unrecorded_in_passthrough_mode(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Google bills no read: a GET, HEAD or OPTIONS of a route the proxy does not know is
    # relayed and leaves no record.
    stack = await passthrough_stack(make_stack, recording_upstream)
    reads = [
        ("GET", "/v1beta/decisions"),
        ("GET", "/v1beta/somethingNew?pageSize=3"),
        ("HEAD", "/v1beta/corpora/c-1"),
        ("OPTIONS", "/v1beta/webhooks"),
    ]
    for method, target in reads:
        status, _, _ = await raw(method, stack.url(target), headers={"x-goog-api-key": OWN_KEY})
        assert status == 200, (method, target)
    assert [(r.method, r.raw_path) for r in recording_upstream.received] == reads
    assert await stack.records() == []
    assert unmetered_count(stack, "unlisted") == 0


async def test_an_unlisted_write_is_checked_against_the_callers_budgets(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Recorded like the table's writes, it reserves like them: a caller whose budget is
    # spent cannot reach a model call the meter does not read. A read costs nothing.
    stack = await passthrough_stack(make_stack, recording_upstream, budget_refresh_seconds=3600.0)
    await add_budget(stack.app, "user:dana", limit_usd="0.01")
    await add_spend(stack.app, "dana", "0.01")
    await stack.app[budgets_key].refresh()
    headers = {"x-goog-api-key": OWN_KEY}
    status, _, body = await raw(
        "POST", stack.url("/v1beta/decisions"), headers=headers, json=DECISION
    )
    assert status == 429
    assert "user:dana" in gemini_error(body, 429, "RESOURCE_EXHAUSTED")
    assert recording_upstream.received == []
    status, _, _ = await raw("GET", stack.url("/v1beta/decisions"), headers=headers)
    assert status == 200
    assert recording_upstream.paths() == ["/v1beta/decisions"]


@sqlite_only
async def test_unlisted_writes_stay_refused_with_virtual_keys(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    for target in ("/v1beta/decisions", "/v1beta/somethingNew:run"):
        status, _, body = await raw(
            "POST", stack.url(target), headers=stack.headers("bob"), json=DECISION
        )
        assert status == 404, target
        assert "not offered through Gemini Meter" in gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    assert await stack.records() == []
    assert unmetered_count(stack, "unlisted") == 0


# --- OpenAI-compatible batches ----------------------------------------------------------
# The openai SDK's batch flow (files.create, batches.create naming the file by id,
# batches.retrieve, batches.cancel, files.content), in every spelling: version prefixes,
# /upload/ and /download/, case, a trailing slash, a query, a percent-encoded letter; and
# the methods OpenAI does not have. (method, request target exactly as sent)
OPENAI_BATCHES = [
    ("POST", "/v1beta/openai/batches"),
    ("POST", "/v1/openai/batches"),
    ("POST", "/v1alpha/openai/batches/"),
    ("POST", "/v1beta/OpenAI/Batches"),
    ("POST", "/v1beta/OPENAI/BATCHES/"),
    ("POST", "/upload/v1beta/openai/batches"),
    ("POST", "/download/v1beta/openai/batches"),
    ("POST", "/v1beta/openai/batches?alt=json"),
    ("POST", "/v1beta/openai/%62atches"),
    ("POST", "/v1beta/openai/batches/batch-1/cancel"),
    ("POST", "/v1beta/OpenAI/Batches/batch-1:cancel"),
    ("GET", "/v1beta/openai/batches"),
    ("GET", "/v1beta/openai/batches/batch-1"),
    ("DELETE", "/v1beta/openai/batches/batch-1"),
    ("PATCH", "/v1beta/openai/batches/batch-1"),
]
# alice's file, named by id in bob's batch: no owner would have been checked
BATCH_OF_ALICES_FILE = json.dumps(
    {
        "input_file_id": "files/alice-input",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
).encode()


@sqlite_only
async def test_openai_batches_are_refused_with_virtual_keys(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # Behind the shared key a batch would be the organisation's and its input file anyone's;
    # its results could not be read back through the proxy (openai/files is refused) anyway.
    stack = await make_stack(upstream=recording_upstream.url)
    auth = stack.app[authenticator_key]
    alice = await auth.authenticate(PresentedKey(stack.keys["alice"], "header"))
    assert await auth.commit_resource(ResourceKind.FILE, "files/alice-input", alice)
    for method, target in OPENAI_BATCHES:
        # bob, the file's owner, and no key at all: the same answer, before the key is read
        for user in ("bob", "alice", None):
            status, body = await raw_target(stack, method, target, user, BATCH_OF_ALICES_FILE)
            assert status == 404, (method, target, user)
            message = gemini_error(body, 404, "NOT_FOUND")
            assert "not offered through Gemini Meter" in message, message
    assert recording_upstream.received == []
    assert await stack.records() == []


async def test_openai_batches_are_relayed_and_recorded_in_passthrough_mode(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    # The client's own key pays for its batches: a create or cancel is recorded like the
    # surface's other calls (openai.other), a read relayed unrecorded, a method OpenAI does
    # not have recorded as unlisted.
    stack = await passthrough_stack(make_stack, recording_upstream)
    for method, target in OPENAI_BATCHES:
        status = await send_with_own_key(stack, method, target, BATCH_OF_ALICES_FILE)
        assert status == 200, (method, target)
    received = recording_upstream.received
    assert [(r.method, r.raw_path) for r in received] == OPENAI_BATCHES
    assert {r.body for r in received} == {BATCH_OF_ALICES_FILE}
    assert {r.headers["x-goog-api-key"] for r in received} == {OWN_KEY}
    records = await stack.records()
    assert [r["endpoint"] for r in records] == ["openai.other"] * 11 + ["unlisted"] * 2
    assert {r["user_id"] for r in records} == {await stack.user_id("dana")}
    assert unmetered_count(stack, "openai.other") == 11


# --- the rest of the OpenAI-compatible surface -------------------------------------------
# POSTs of the openai SDK 3.57.0 that make or name stored objects (the organisation's,
# behind the shared key), mint a Realtime client secret (a session at Google past the
# meter), or that Google adds tomorrow. (method, request target exactly as sent)
OPENAI_STATEFUL = [
    ("POST", "/v1beta/openai/responses"),
    ("POST", "/v1beta/openai/chat/completions/chatcmpl-1"),
    ("POST", "/v1beta/openai/uploads"),
    ("POST", "/v1beta/openai/vector_stores"),
    ("POST", "/v1/OpenAI/Realtime/Client_Secrets/"),
    ("POST", "/upload/v1beta/openai/fine_tuning/jobs"),
    ("POST", "/v1alpha/openai/somethingNew?x=1"),
]
# the model calls that make and name nothing stored, offered (recorded as openai.other)
OPENAI_STATELESS = [
    ("POST", "/v1beta/openai/completions"),
    ("POST", "/v1/OpenAI/Moderations/"),
    ("POST", "/upload/v1beta/openai/audio/speech"),
    ("POST", "/v1beta/openai/images/edits"),
]
OPENAI_BODY = b'{"model": "gemini-2.5-flash", "input": "Say hi"}'


@sqlite_only
async def test_only_stateless_openai_calls_reach_the_upstream_with_virtual_keys(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await make_stack(upstream=recording_upstream.url)
    for method, target in OPENAI_STATEFUL:
        status, body = await raw_target(stack, method, target, "bob", OPENAI_BODY)
        assert status == 404, (method, target)
        assert "not offered through Gemini Meter" in gemini_error(body, 404, "NOT_FOUND")
    assert recording_upstream.received == []
    for method, target in OPENAI_STATELESS:
        status, _ = await raw_target(stack, method, target, "bob", OPENAI_BODY)
        assert status == 200, (method, target)
    received = recording_upstream.received
    assert [(r.method, r.raw_path) for r in received] == OPENAI_STATELESS
    assert {r.headers["x-goog-api-key"] for r in received} == {UPSTREAM_KEY}
    records = await stack.records()
    assert [r["endpoint"] for r in records] == ["openai.other"] * len(OPENAI_STATELESS)
    assert {r["user_id"] for r in records} == {await stack.user_id("bob")}


async def test_every_openai_call_is_relayed_and_recorded_in_passthrough_mode(
    make_stack: StackFactory, recording_upstream: RecordingUpstream
):
    stack = await passthrough_stack(make_stack, recording_upstream)
    sent = OPENAI_STATEFUL + OPENAI_STATELESS
    for method, target in sent:
        status = await send_with_own_key(stack, method, target, OPENAI_BODY)
        assert status == 200, (method, target)
    received = recording_upstream.received
    assert [(r.method, r.raw_path) for r in received] == sent
    assert {r.headers["x-goog-api-key"] for r in received} == {OWN_KEY}
    records = await stack.records()
    assert [r["endpoint"] for r in records] == ["openai.other"] * len(sent)
    assert unmetered_count(stack, "openai.other") == len(sent)
