"""Request classification and request metadata: pure functions."""

from __future__ import annotations

import pytest

from proxy.metering.records import EndpointKind
from proxy.server.routes import Action, classify, is_forwarded, request_meta


@pytest.mark.parametrize(
    ("method", "path", "action", "iid", "model"),
    [
        ("POST", "/v1beta/interactions", Action.INTERACTION_CREATE, None, None),
        ("POST", "/v1/interactions", Action.INTERACTION_CREATE, None, None),
        ("GET", "/v1alpha/interactions/abc-123", Action.INTERACTION_GET, "abc-123", None),
        ("DELETE", "/v1beta/interactions/abc", Action.INTERACTION_DELETE, "abc", None),
        ("POST", "/v1beta/interactions/abc/cancel", Action.INTERACTION_CANCEL, "abc", None),
        ("GET", "/v1beta/interactions", Action.INTERACTION_UNKNOWN, None, None),
        ("POST", "/v1beta/interactions/abc:cancel", Action.INTERACTION_CANCEL, "abc", None),
        ("PATCH", "/v1beta/interactions/abc", Action.INTERACTION_UNKNOWN, "abc", None),
        ("HEAD", "/v1beta/interactions/abc", Action.INTERACTION_UNKNOWN, "abc", None),
        ("POST", "/v1beta/interactions/abc", Action.INTERACTION_UNKNOWN, "abc", None),
        ("POST", "/v1beta/interactions/abc:resume", Action.INTERACTION_UNKNOWN, "abc", None),
        ("GET", "/v1beta/interactions/abc/steps", Action.INTERACTION_UNKNOWN, "abc", None),
        ("GET", "/upload/v1beta/interactions/abc", Action.INTERACTION_GET, "abc", None),
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
