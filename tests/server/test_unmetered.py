"""Billable routes the meter cannot read yet: relayed untouched, still recorded and counted.

The upstream here is a catch-all that records every request it receives (method,
raw path and query, headers, body bytes) and answers a fixed body, so each test
asserts both what reached the upstream and what came back to the client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from proxy.server.auth import PresentedKey
from proxy.server.routes import UNMETERED_ROUTES
from proxy.server.typedefs import authenticator_key, metrics_key
from proxy.storage.schema import ResourceKind
from tests.factories import UPSTREAM_KEY, Received, Stack, StackFactory, metric_sum, raw

SSE_EVENTS = [
    b'data: {"id":"c1","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"id":"c1","choices":[{"delta":{"content":"lo"}}]}\n\n',
    b"data: [DONE]\n\n",
]


def answer_for(path: str) -> bytes:
    return json.dumps({"answered": path}).encode()


async def catch_all_upstream(aiohttp_server: Any) -> tuple[Any, list[Received]]:
    """An upstream that keeps every request; ``x-catchall-status`` picks the status."""
    received: list[Received] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received.append(
            Received(
                method=request.method,
                raw_path=request.raw_path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if b'"stream": true' in body:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in SSE_EVENTS:
                await response.write(event)
            await response.write_eof()
            return response
        status = int(request.headers.get("x-catchall-status", "200"))
        headers = {}
        if request.headers.get("x-goog-upload-protocol") == "resumable":
            # A resumable upload's start leg: Google answers with the URL of its byte legs.
            headers["x-goog-upload-url"] = f"{request.url.with_query(None)}?upload_id=u-1"
        return web.Response(
            status=status,
            body=answer_for(request.path),
            content_type="application/json",
            headers=headers,
        )

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    return await aiohttp_server(app), received


async def stack_on_catch_all(
    make_stack: StackFactory, aiohttp_server: Any
) -> tuple[Stack, list[Received]]:
    upstream, received = await catch_all_upstream(aiohttp_server)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    return stack, received


async def own(stack: Stack, user: str, *names: tuple[ResourceKind, str]) -> None:
    """Make ``user`` the owner of resources the catch-all never created (a File Search
    import must name the caller's own store and file)."""
    auth = stack.app[authenticator_key]
    principal = await auth.authenticate(PresentedKey(stack.keys[user], "header"))
    for kind, name in names:
        assert await auth.commit_resource(kind, name, principal)


STORE_1 = (ResourceKind.FILE_SEARCH_STORE, "fileSearchStores/store-1")
FILE_ABC = (ResourceKind.FILE, "files/abc")


def unmetered_count(stack: Stack, route: str) -> float:
    value = stack.app[metrics_key].registry.get_sample_value(
        "gemini_meter_unmetered_route_requests_total", {"route": route}
    )
    return value or 0.0


# One call per family of the table: (method, path with query, JSON body or None, the kind,
# the model the record must name).
FAMILIES = [
    (
        "GET",
        "/v1beta/tunedModels/t-1/operations/op-1",
        None,
        "operation.get",
        None,
    ),
    (
        "POST",
        "/v1beta/fileSearchStores/store-1:importFile",
        {"fileName": "files/abc"},
        "file_search.import",
        None,
    ),
    (
        "POST",
        "/v1beta/openai/completions",
        {"model": "gemini-2.5-flash", "prompt": "Say hi"},
        "openai.other",
        None,
    ),
]


def test_every_row_of_the_table_has_a_family_here():
    # auth_tokens has tests of its own below: refused with virtual keys
    families = {f[3] for f in FAMILIES} | {"auth_token.create"}
    assert {row.kind.value for row in UNMETERED_ROUTES} == families


@pytest.mark.parametrize(
    "path", ["/v1alpha/auth_tokens/", "/v1alpha/AUTH_TOKENS", "/v1beta/Auth_Tokens?alt=json"]
)
async def test_ephemeral_tokens_are_minted_at_the_canonical_path_only_with_virtual_keys(
    make_stack: StackFactory, aiohttp_server: Any, path: str
):
    # A token minted with the shared upstream key would open a Live session at Google
    # that never passes the proxy: only server.live mints (tests/server/test_live.py),
    # and no other spelling of the route may reach the upstream.
    stack, received = await stack_on_catch_all(make_stack, aiohttp_server)
    status, _, answer = await raw(
        "POST", stack.url(path), headers=stack.headers("bob"), json={"uses": 1}
    )
    assert status == 403
    assert json.loads(answer)["error"]["status"] == "PERMISSION_DENIED"
    assert received == []
    assert await stack.records() == []


async def test_ephemeral_tokens_pass_and_are_recorded_in_passthrough_mode(
    make_stack: StackFactory, aiohttp_server: Any
):
    # In passthrough mode the client's own Google key mints (and pays for) the token.
    upstream, received = await catch_all_upstream(aiohttp_server)
    stack = await make_stack(
        upstream=str(upstream.make_url("")).rstrip("/"), auth_mode="passthrough"
    )
    status, _, _ = await raw(
        "POST",
        stack.url("/v1alpha/auth_tokens"),
        headers={"x-goog-api-key": "AIza-client-own-key"},
        json={"uses": 1},
    )
    assert status == 200
    assert [r.headers["x-goog-api-key"] for r in received] == ["AIza-client-own-key"]
    [record] = await stack.records()
    assert (record["endpoint"], record["unmetered_route"]) == ("auth_token.create", True)


@pytest.mark.parametrize(
    ("method", "path", "body", "kind", "model"), FAMILIES, ids=[f[3] for f in FAMILIES]
)
async def test_an_unmetered_route_is_relayed_untouched_and_recorded(
    make_stack: StackFactory,
    aiohttp_server: Any,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    kind: str,
    model: str | None,
):
    stack, received = await stack_on_catch_all(make_stack, aiohttp_server)
    await own(stack, "bob", STORE_1, FILE_ABC)
    # spacing no JSON encoder of ours would produce: any re-encoding would show
    sent = None if body is None else json.dumps(body, indent=3).encode()
    status, headers, answer = await raw(
        method,
        stack.url(path),
        headers=stack.headers("bob", **{"X-Custom": "kept", "Content-Type": "application/json"}),
        data=sent,
    )
    assert status == 200
    assert answer == answer_for(path.partition("?")[0])
    assert headers["Content-Type"].startswith("application/json")

    [seen] = received
    assert seen.method == method
    assert seen.raw_path == path
    assert seen.body == (sent or b"")
    assert seen.headers["x-custom"] == "kept"
    assert seen.headers["x-goog-api-key"] == UPSTREAM_KEY

    [record] = await stack.records()
    assert record["unmetered_route"] is True
    assert record["endpoint"] == kind
    assert record["model"] == model
    assert record["user_id"] == await stack.user_id("bob")
    assert record["upstream_status"] == 200
    assert record["streamed"] is False
    assert record["input_tokens"] == record["output_tokens"] == record["total_tokens"] == 0
    assert record["estimated"] is False
    # zero tokens are not a zero cost: the cost is unknown
    assert record["cost_usd"] is None
    assert record["unpriced"] is True
    assert unmetered_count(stack, kind) == 1
    registry = stack.app[metrics_key].registry
    requests = {"endpoint": kind, "status_class": "2xx", "principal": "support"}
    assert metric_sum(registry, "gemini_meter_requests_total", **requests) == 1
    # not counted as a model the catalog lacks
    unpriced = stack.app[metrics_key].registry.get_sample_value(
        "gemini_meter_unpriced_records_total"
    )
    assert unpriced == 0


async def test_a_stream_on_an_unmetered_route_stays_a_stream(
    make_stack: StackFactory, aiohttp_server: Any
):
    stack, received = await stack_on_catch_all(make_stack, aiohttp_server)
    body = {"model": "gemini-2.5-flash", "prompt": "Say hi", "stream": True}
    status, headers, answer = await raw(
        "POST",
        stack.url("/v1beta/openai/completions"),
        headers={"Authorization": f"Bearer {stack.keys['carol']}"},
        json=body,
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert answer == b"".join(SSE_EVENTS)
    [seen] = received
    # the client's bearer key never reaches the upstream; the proxy's key does
    assert "authorization" not in seen.headers
    assert seen.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert json.loads(seen.body) == body
    [record] = await stack.records()
    assert record["endpoint"] == "openai.other"
    assert record["streamed"] is True
    assert record["unmetered_route"] is True
    assert record["user_id"] == await stack.user_id("carol")
    assert unmetered_count(stack, "openai.other") == 1


async def test_an_upstream_error_on_an_unmetered_route_is_recorded_with_its_status(
    make_stack: StackFactory, aiohttp_server: Any
):
    stack, _ = await stack_on_catch_all(make_stack, aiohttp_server)
    await own(stack, "alice", STORE_1, FILE_ABC)
    status, _, _ = await raw(
        "POST",
        stack.url("/v1beta/fileSearchStores/store-1:importFile"),
        headers=stack.headers(**{"x-catchall-status": "429"}),
        json={"fileName": "files/abc"},
    )
    assert status == 429
    [record] = await stack.records()
    assert (record["upstream_status"], record["unmetered_route"]) == (429, True)
    assert unmetered_count(stack, "file_search.import") == 1


async def test_a_file_search_upload_is_recorded_once_for_its_authenticated_leg(
    make_stack: StackFactory, aiohttp_server: Any
):
    stack, received = await stack_on_catch_all(make_stack, aiohttp_server)
    await own(stack, "alice", STORE_1)
    path = "/upload/v1beta/fileSearchStores/store-1:uploadToFileSearchStore"
    status, _, _ = await raw(
        "POST",
        stack.url(path),
        headers=stack.headers(**{"x-goog-upload-protocol": "resumable"}),
        json={"displayName": "doc"},
    )
    assert status == 200
    # the byte leg carries no key: its upload id is its credential, as with Google
    status, _, _ = await raw(
        "POST", stack.url(path + "?upload_id=u-1&upload_protocol=resumable"), data=b"%PDF-1.7 x"
    )
    assert status == 200
    assert [r.body for r in received] == [b'{"displayName": "doc"}', b"%PDF-1.7 x"]
    [record] = await stack.records()
    assert record["endpoint"] == "file_search.import"
    assert record["unmetered_route"] is True
    assert unmetered_count(stack, "file_search.import") == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1beta/models/gemini-2.5-flash:countTokens"),
        ("GET", "/v1beta/models/gemini-2.5-flash"),
        ("GET", "/v1beta/openai/models"),
    ],
)
async def test_free_routes_are_relayed_and_not_recorded(
    make_stack: StackFactory, aiohttp_server: Any, method: str, path: str
):
    stack, received = await stack_on_catch_all(make_stack, aiohttp_server)
    status, _, _ = await raw(method, stack.url(path), headers=stack.headers())
    assert status == 200
    assert len(received) == 1
    assert await stack.records() == []
