"""Request classification and request metadata: pure functions."""

from __future__ import annotations

import pytest

from proxy.metering.records import EndpointKind
from proxy.server.routes import (
    UNMETERED_ROUTES,
    Action,
    body_model,
    classify,
    is_forwarded,
    request_meta,
)


@pytest.mark.parametrize(
    ("method", "path", "action", "iid", "model"),
    [
        ("POST", "/v1beta/interactions", Action.INTERACTION_CREATE, None, None),
        ("POST", "/v1/interactions", Action.INTERACTION_CREATE, None, None),
        ("GET", "/v1alpha/interactions/abc-123", Action.INTERACTION_GET, "abc-123", None),
        ("DELETE", "/v1beta/interactions/abc", Action.INTERACTION_DELETE, "abc", None),
        ("POST", "/v1beta/interactions/abc/cancel", Action.INTERACTION_CANCEL, "abc", None),
        ("GET", "/v1beta/interactions", Action.FORWARD, None, None),
        (
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Action.GENERATE,
            None,
            "gemini-2.5-flash",
        ),
        (
            "POST",
            "/v1/models/gemini-3.5-flash:streamGenerateContent",
            Action.STREAM_GENERATE,
            None,
            "gemini-3.5-flash",
        ),
        ("POST", "/v1beta/tunedModels/my-model:generateContent", Action.GENERATE, None, "my-model"),
        ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", Action.FORWARD, None, None),
        ("GET", "/v1beta/models/gemini-2.5-flash:generateContent", Action.FORWARD, None, None),
        ("POST", "/upload/v1beta/files", Action.FORWARD, None, None),
        ("GET", "/v1beta/models", Action.FORWARD, None, None),
    ],
)
def test_classify(method: str, path: str, action: Action, iid: str | None, model: str | None):
    route = classify(method, path)
    assert route.action is action
    assert route.interaction_id == iid
    assert route.model == model


def test_only_billing_routes_are_metered():
    assert classify("POST", "/v1beta/interactions").endpoint is EndpointKind.INTERACTION_CREATE
    assert classify("GET", "/v1beta/interactions/x").endpoint is EndpointKind.INTERACTION_GET
    assert not classify("DELETE", "/v1beta/interactions/x").metered
    assert not classify("POST", "/v1beta/interactions/x/cancel").metered
    assert not classify("POST", "/v1beta/models/m:countTokens").metered


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/v1/models", True),
        ("/v1beta/interactions", True),
        ("/v1alpha/x", True),
        ("/upload/v1beta/files", True),
        ("/v2/models", False),
        ("/metricsx", False),
        ("/v1", False),
    ],
)
def test_is_forwarded(path: str, forwarded: bool):
    assert is_forwarded(path) is forwarded


def test_interaction_meta():
    route = classify("POST", "/v1beta/interactions")
    meta = request_meta(
        route,
        {
            "model": "gemini-3.5-flash",
            "stream": True,
            "background": False,
            "service_tier": "FLEX",
            "previous_interaction_id": "prev-1",
            "labels": {"team": "search", "bad": 3, "x" * 64: "too-long-key"},
        },
    )
    assert meta.model == "gemini-3.5-flash"
    assert meta.stream is True
    assert meta.background is False
    assert meta.service_tier == "flex"
    assert meta.previous_interaction_id == "prev-1"
    assert meta.labels == {"team": "search"}


def test_agent_interaction_names_the_agent():
    meta = request_meta(classify("POST", "/v1beta/interactions"), {"agent": "deep-research"})
    assert meta.model == "agent:deep-research"


def test_generate_meta_takes_the_model_from_the_path():
    route = classify("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent")
    meta = request_meta(route, {"contents": [], "serviceTier": "priority", "model": "ignored"})
    assert meta.model == "gemini-2.5-pro"
    assert meta.stream is True
    assert meta.service_tier == "priority"


@pytest.mark.parametrize("body", [None, [], "text", 3, {"model": 5, "stream": "yes"}])
def test_meta_never_raises_on_odd_bodies(body: object):
    meta = request_meta(classify("POST", "/v1beta/interactions"), body)
    assert meta.model is None
    assert meta.stream is False


def test_labels_are_bounded():
    labels = {f"k{i:03}": "v" for i in range(100)}
    meta = request_meta(classify("POST", "/v1beta/interactions"), {"labels": labels})
    assert meta.labels is not None
    assert len(meta.labels) == 64


# --- embeddings and unmetered billable routes ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "action", "kind", "model"),
    [
        (
            "/v1beta/models/gemini-embedding-001:embedContent",
            Action.EMBED,
            EndpointKind.EMBED_CONTENT,
            "gemini-embedding-001",
        ),
        (
            "/v1/models/gemini-embedding-2:batchEmbedContents",
            Action.BATCH_EMBED,
            EndpointKind.BATCH_EMBED_CONTENTS,
            "gemini-embedding-2",
        ),
        ("/v1beta/tunedModels/t1:embedContent", Action.EMBED, EndpointKind.EMBED_CONTENT, "t1"),
    ],
)
def test_embeddings_are_metered(path: str, action: Action, kind: EndpointKind, model: str):
    route = classify("POST", path)
    assert route.action is action
    assert route.endpoint is kind
    assert route.metered
    assert route.model == model
    assert route.unmetered is None
    assert not classify("GET", path).metered


@pytest.mark.parametrize(
    ("method", "path", "kind", "model"),
    [
        (
            "POST",
            "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            EndpointKind.BATCH_GENERATE_CONTENT,
            "gemini-2.5-flash",
        ),
        (
            "POST",
            "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent",
            EndpointKind.ASYNC_BATCH_EMBED_CONTENT,
            "gemini-embedding-001",
        ),
        ("GET", "/v1beta/batches/b-123", EndpointKind.BATCH_GET, None),
        ("POST", "/v1beta/cachedContents", EndpointKind.CACHED_CONTENT_CREATE, None),
        ("PATCH", "/v1beta/cachedContents/c-1", EndpointKind.CACHED_CONTENT_UPDATE, None),
        (
            "POST",
            "/v1beta/models/imagen-4.0-generate-001:predict",
            EndpointKind.PREDICT,
            "imagen-4.0-generate-001",
        ),
        (
            "POST",
            "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
            EndpointKind.PREDICT_LONG_RUNNING,
            "veo-3.0-generate-001",
        ),
        (
            "GET",
            "/v1beta/models/veo-3.0-generate-001/operations/op-9",
            EndpointKind.OPERATION_GET,
            "veo-3.0-generate-001",
        ),
        ("GET", "/v1beta/fileSearchStores/s/operations/op-1", EndpointKind.OPERATION_GET, None),
        ("GET", "/v1beta/operations/op-2", EndpointKind.OPERATION_GET, None),
        ("POST", "/v1beta/fileSearchStores/s:importFile", EndpointKind.FILE_SEARCH_IMPORT, None),
        (
            "POST",
            "/upload/v1beta/fileSearchStores/s:uploadToFileSearchStore",
            EndpointKind.FILE_SEARCH_IMPORT,
            None,
        ),
        ("POST", "/v1alpha/auth_tokens", EndpointKind.AUTH_TOKEN_CREATE, None),
        (
            "POST",
            "/v1beta/openai/chat/completions",
            EndpointKind.OPENAI_CHAT_COMPLETIONS,
            None,
        ),
        ("POST", "/v1beta/openai/embeddings", EndpointKind.OPENAI_EMBEDDINGS, None),
        ("POST", "/v1beta/openai/images/generations", EndpointKind.OPENAI_IMAGES, None),
        ("POST", "/v1beta/openai/batches", EndpointKind.OPENAI_OTHER, None),
    ],
)
def test_unmetered_billable_routes(method: str, path: str, kind: EndpointKind, model: str | None):
    route = classify(method, path)
    assert route.action is Action.UNMETERED
    assert route.unmetered is not None
    assert route.unmetered.kind is kind
    assert route.model == model
    # relayed untouched: no tap, no accept-encoding rewriting
    assert route.endpoint is None
    assert not route.metered


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # free: not billed, so not recorded
        ("POST", "/v1beta/models/gemini-2.5-flash:countTokens"),
        ("POST", "/upload/v1beta/files"),
        ("GET", "/v1beta/files/f-1"),
        ("GET", "/v1beta/cachedContents/c-1"),
        ("DELETE", "/v1beta/cachedContents/c-1"),
        ("GET", "/v1beta/cachedContents"),
        ("GET", "/v1beta/batches"),
        ("POST", "/v1beta/batches/b-1:cancel"),
        ("DELETE", "/v1beta/batches/b-1"),
        ("GET", "/v1beta/openai/models"),
        ("POST", "/v1beta/openai/files"),
        ("GET", "/v1beta/models/gemini-2.5-flash:batchGenerateContent"),
    ],
)
def test_free_routes_are_not_in_the_table(method: str, path: str):
    assert classify(method, path).action is Action.FORWARD


def test_unmetered_kinds_are_bounded_and_apart_from_metered_ones():
    kinds = {row.kind for row in UNMETERED_ROUTES}
    metered = {
        EndpointKind.INTERACTION_CREATE,
        EndpointKind.INTERACTION_GET,
        EndpointKind.GENERATE_CONTENT,
        EndpointKind.STREAM_GENERATE_CONTENT,
        EndpointKind.EMBED_CONTENT,
        EndpointKind.BATCH_EMBED_CONTENTS,
    }
    assert kinds.isdisjoint(metered)
    # every other kind is some row's: the metric's label values are the table's
    assert kinds | metered == set(EndpointKind)


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"model": "models/gemini-2.5-flash", "contents": []}, "gemini-2.5-flash"),
        ({"model": "gemini-2.5-flash", "messages": []}, "gemini-2.5-flash"),
        ({"model": "models/"}, None),
        ({"model": 3}, None),
        ([], None),
        (None, None),
    ],
)
def test_body_model(body: object, model: str | None):
    assert body_model(body) == model
