"""Request classification and request metadata: pure functions."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, MultiDict

from proxy.metering.records import EndpointKind
from proxy.server import routes
from proxy.server.routes import (
    UNLISTED_WRITE,
    UNMETERED_ROUTES,
    Action,
    BodyRefused,
    body_model,
    classify,
    is_forwarded,
    masking_parameter,
    method_override,
    path_problem,
    previous_interaction_ids,
    request_meta,
    strict_json,
)


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
        ("GET", "/v1beta/Interactions/abc", Action.INTERACTION_GET, "abc", None),
        ("POST", "/v1beta/INTERACTIONS/abc:Cancel", Action.INTERACTION_CANCEL, "abc", None),
        ("POST", "/v1beta/models/m:GENERATECONTENT", Action.GENERATE, None, "m"),
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
        ("POST", "/v1beta/models/g:countTokens", Action.COUNT_TOKENS, None, "g"),
        ("GET", "/v1beta/models/gemini-2.5-flash:generateContent", Action.UNLISTED, None, None),
        ("POST", "/upload/v1beta/files", Action.FILE_UPLOAD, None, None),
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
        ("GET", "/v1beta/tunedModels/t/operations/op-1", EndpointKind.OPERATION_GET, None),
        ("POST", "/v1alpha/auth_tokens", EndpointKind.AUTH_TOKEN_CREATE, None),
        ("POST", "/v1beta/openai/batches", EndpointKind.OPENAI_OTHER, None),
        ("POST", "/v1beta/openai/images/edits", EndpointKind.OPENAI_OTHER, None),
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
    ("method", "path", "action"),
    [
        # free: not billed, so not recorded
        ("GET", "/v1beta/openai/models", Action.FORWARD),
        # unlisted (refused with virtual keys), and not billed either
        ("GET", "/v1beta/openai/files", Action.UNLISTED),
        ("GET", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", Action.UNLISTED),
    ],
)
def test_free_routes_are_not_in_the_table(method: str, path: str, action: Action):
    route = classify(method, path)
    assert route.action is action
    assert route.unmetered is None


# --- what virtual_keys mode offers -------------------------------------------------------
# Every route a Gemini Developer API call of the pinned SDKs reaches: google-genai 3.6.1
# (each module's mldev branch, the path it formats under its default version "v1",
# _api_client.GOOGLE_AI_API_DEFAULT_VERSION: models.py, tunings.py, caches.py, files.py,
# batches.py, file_search_stores.py, documents.py, operations.py, tokens.py (v1alpha, its
# own); the Interactions API and the rest from _gaos/*.py), and @google/genai 3.3.0
# (dist/index.mjs: the same paths). Sample ids stand in for names.
SDK_ROUTES_OFFERED = [
    ("models.generate_content", "POST", "/v1/models/gemini-2.5-flash:generateContent"),
    ("models.generate_content (tuned)", "POST", "/v1/tunedModels/t-1:generateContent"),
    (
        "models.generate_content_stream",
        "POST",
        "/v1/tunedModels/t-1:streamGenerateContent",
    ),
    ("models.embed_content", "POST", "/v1/models/gemini-embedding-001:batchEmbedContents"),
    ("models.count_tokens", "POST", "/v1/tunedModels/t-1:countTokens"),
    ("models.list", "GET", "/v1/models"),
    ("models.list(query_base=False)", "GET", "/v1/tunedModels"),
    ("models.get", "GET", "/v1/models/gemini-2.5-flash"),
    ("models.get (tuned), tunings.get", "GET", "/v1/tunedModels/t-1"),
    ("caches.create", "POST", "/v1/cachedContents"),
    ("caches.list", "GET", "/v1/cachedContents"),
    ("caches.get", "GET", "/v1/cachedContents/c-1"),
    ("caches.update", "PATCH", "/v1/cachedContents/c-1"),
    ("caches.delete", "DELETE", "/v1/cachedContents/c-1"),
    ("files.upload", "POST", "/upload/v1/files"),
    ("files.register_files", "POST", "/v1/files:register"),
    ("files.list", "GET", "/v1/files"),
    ("files.get", "GET", "/v1/files/f-1"),
    ("files.delete", "DELETE", "/v1/files/f-1"),
    ("files.download", "GET", "/v1/files/f-1:download"),
    ("batches.create", "POST", "/v1/models/gemini-2.5-flash:batchGenerateContent"),
    (
        "batches.create_embeddings",
        "POST",
        "/v1/models/gemini-embedding-001:asyncBatchEmbedContent",
    ),
    ("batches.list", "GET", "/v1/batches"),
    ("batches.get", "GET", "/v1/batches/b-1"),
    ("batches.cancel", "POST", "/v1/batches/b-1:cancel"),
    ("batches.delete", "DELETE", "/v1/batches/b-1"),
    ("file_search_stores.create", "POST", "/v1/fileSearchStores"),
    ("file_search_stores.list", "GET", "/v1/fileSearchStores"),
    ("file_search_stores.get", "GET", "/v1/fileSearchStores/s-1"),
    ("file_search_stores.delete", "DELETE", "/v1/fileSearchStores/s-1"),
    (
        "file_search_stores.upload_to_file_search_store",
        "POST",
        "/upload/v1/fileSearchStores/s-1:uploadToFileSearchStore",
    ),
    ("file_search_stores.import_file", "POST", "/v1/fileSearchStores/s-1:importFile"),
    ("file_search_stores.documents.list", "GET", "/v1/fileSearchStores/s-1/documents"),
    ("file_search_stores.documents.get", "GET", "/v1/fileSearchStores/s-1/documents/d-1"),
    (
        "file_search_stores.documents.delete",
        "DELETE",
        "/v1/fileSearchStores/s-1/documents/d-1",
    ),
    ("operations.get (import)", "GET", "/v1/fileSearchStores/s-1/operations/o-1"),
    ("operations.get (upload)", "GET", "/v1/fileSearchStores/s-1/upload/operations/o-1"),
    ("operations.get (Veo)", "GET", "/v1/models/veo-3/operations/o-1"),
    ("auth_tokens.create", "POST", "/v1alpha/auth_tokens"),
    ("interactions.create", "POST", "/v1/interactions"),
    ("interactions.get", "GET", "/v1/interactions/i-1"),
    ("interactions.delete", "DELETE", "/v1/interactions/i-1"),
    ("interactions.cancel", "POST", "/v1/interactions/i-1/cancel"),
]

# SDK calls whose route the proxy does not offer with virtual keys: their upstream effect is
# the whole organisation's (a tuned model changed, deleted or made; resources of
# _gaos/agents.py, credentials.py, environments.py, files.py, triggers.py, voices.py and
# webhooks.py, which nobody owns here and every key would list; decisions.py, a model call
# the meter does not read).
SDK_ROUTES_REFUSED = [
    ("models.update (tuned)", "PATCH", "/v1/tunedModels/t-1"),
    ("models.update", "PATCH", "/v1/models/gemini-2.5-flash"),
    ("models.delete (tuned)", "DELETE", "/v1/tunedModels/t-1"),
    ("models.delete", "DELETE", "/v1/models/gemini-2.5-flash"),
    ("tunings.tune", "POST", "/v1/tunedModels"),
    ("tunings.cancel", "POST", "/v1/tunedModels/t-1:cancel"),
    ("webhooks.create", "POST", "/v1/webhooks"),
    ("webhooks.list", "GET", "/v1/webhooks"),
    ("webhooks.update", "PATCH", "/v1/webhooks/w-1"),
    ("webhooks.ping", "POST", "/v1/webhooks/w-1:ping"),
    ("webhooks.rotate_signing_secret", "POST", "/v1/webhooks/w-1:rotateSigningSecret"),
    ("agents.create", "POST", "/v1/agents"),
    ("agents.list", "GET", "/v1/agents"),
    ("agents.delete", "DELETE", "/v1/agents/a-1"),
    ("credentials.create", "POST", "/v1/credentials"),
    ("credentials.get", "GET", "/v1/credentials/cr-1"),
    ("environments.create", "POST", "/v1/environments"),
    ("environments.files upload", "PUT", "/upload/v1/environments/e-1/files/a.txt"),
    ("environments.files get", "GET", "/v1/environments/e-1/files/a.txt"),
    ("triggers.create", "POST", "/v1/triggers"),
    ("triggers.executions", "POST", "/v1/triggers/tr-1/executions"),
    ("voices.create", "POST", "/v1/voices"),
    ("voices.list", "GET", "/v1/voices"),
    ("decisions.create", "POST", "/v1/decisions"),
]


@pytest.mark.parametrize(
    ("call", "method", "path"), SDK_ROUTES_OFFERED, ids=[r[0] for r in SDK_ROUTES_OFFERED]
)
def test_every_sdk_route_of_the_developer_api_is_offered(call: str, method: str, path: str):
    route = classify(method, path)
    assert route.action is not Action.UNLISTED, call
    assert route.offered, call


@pytest.mark.parametrize(
    ("call", "method", "path"), SDK_ROUTES_REFUSED, ids=[r[0] for r in SDK_ROUTES_REFUSED]
)
def test_sdk_routes_acting_on_the_whole_project_are_not_offered(call: str, method: str, path: str):
    route = classify(method, path)
    assert route.action is Action.UNLISTED, call
    assert not route.offered, call


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/decisions"),
        ("POST", "/v1beta/somethingNew:run"),
        ("PUT", "/upload/v1/environments/e-1/files/a.txt"),
        ("PATCH", "/v1beta/tunedModels/t-1"),
        ("DELETE", "/download/v1alpha/corpora/c-1"),
        ("POST", "/v1beta/openai/files"),
    ],
)
def test_an_unlisted_write_is_recorded_as_unlisted(method: str, path: str):
    # In passthrough mode (virtual keys refuse it): one kind for every path, which is the
    # metric's label, so the path never becomes one.
    route = classify(method, path)
    assert (route.action, route.offered) == (Action.UNLISTED, False)
    assert route.unmetered is not None
    assert route.unmetered.kind is EndpointKind.UNLISTED
    assert not route.unmetered.offered
    assert route.endpoint is None and not route.metered


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_an_unlisted_read_is_not_recorded(method: str):
    for path in ("/v1/decisions", "/v1beta/corpora/c-1", "/v1beta/somethingNew"):
        route = classify(method, path)
        assert (route.action, route.offered) == (Action.UNLISTED, False)
        assert route.unmetered is None


# Google's REST reference (ai.google.dev/api: tuning, tunedModels.permissions,
# tunedModels.operations; semantic-retrieval: corpora, documents, chunks, permissions;
# generatedFiles), what follows the version prefix: none offered, in any method.
UNOFFERED = [
    ("POST", "tunedModels"),
    ("PATCH", "tunedModels/t-1"),
    ("DELETE", "tunedModels/t-1"),
    ("POST", "tunedModels/t-1:transferOwnership"),
    ("POST", "tunedModels/t-1/permissions"),
    ("GET", "tunedModels/t-1/permissions"),
    ("GET", "tunedModels/t-1/permissions/p-1"),
    ("PATCH", "tunedModels/t-1/permissions/p-1"),
    ("DELETE", "tunedModels/t-1/permissions/p-1"),
    ("GET", "tunedModels/t-1/operations"),
    ("POST", "tunedModels/t-1:generateText"),
    ("HEAD", "tunedModels/t-1"),
    ("POST", "corpora"),
    ("GET", "corpora"),
    ("GET", "corpora/c-1"),
    ("PATCH", "corpora/c-1"),
    ("DELETE", "corpora/c-1"),
    ("POST", "corpora/c-1:query"),
    ("POST", "corpora/c-1/documents"),
    ("GET", "corpora/c-1/documents/d-1"),
    ("POST", "corpora/c-1/documents/d-1:query"),
    ("POST", "corpora/c-1/documents/d-1/chunks:batchCreate"),
    ("GET", "corpora/c-1/documents/d-1/chunks/ch-1"),
    ("POST", "corpora/c-1/permissions"),
    ("DELETE", "corpora/c-1/permissions/p-1"),
    ("GET", "corpora/c-1/operations/o-1"),
    ("GET", "generatedFiles"),
    ("GET", "generatedFiles/g-1"),
    ("GET", "generatedFiles/g-1/operations/o-1"),
    ("POST", "models/gemini-2.5-flash:generateAnswer"),
    ("GET", "models/gemini-2.5-flash/permissions"),
    ("GET", "openai/files"),
    ("GET", "openai/files/f-1/content"),
    ("GET", "openai/batches/b-1"),
    # OpenAI-compatible batches in every method: a create names its input file by id,
    # checked against no owner, and the batch would be the organisation's
    ("POST", "openai/batches"),
    ("POST", "openai/batches/b-1/cancel"),
    ("POST", "openai/batches/b-1:cancel"),
    ("GET", "openai/batches"),
    ("DELETE", "openai/batches/b-1"),
    # the rest of the openai SDK 3.57.0's POSTs that make or name stored objects (the
    # organisation's, behind the shared key), a Realtime client secret (a session at Google
    # past the meter), and whatever Google adds there
    ("POST", "openai/responses"),
    ("POST", "openai/chat/completions/c-1"),
    ("POST", "openai/uploads"),
    ("POST", "openai/vector_stores"),
    ("POST", "openai/fine_tuning/jobs"),
    ("POST", "openai/realtime/client_secrets"),
    ("POST", "openai/organization/admin_api_keys"),
    ("POST", "openai/files:import"),
    ("POST", "openai/aSurfaceGoogleAddsTomorrow"),
    ("GET", "aCollectionGoogleAddsTomorrow"),
    ("POST", "aCollectionGoogleAddsTomorrow/x-1:act"),
]
_SPELLINGS = ("/v1/", "/v1beta/", "/v1alpha/", "/upload/v1beta/", "/download/v1alpha/")


@pytest.mark.parametrize(("method", "rest"), UNOFFERED)
def test_unoffered_routes_in_every_spelling(method: str, rest: str):
    # Cased as Google spells it, all capitals, first capital; with a trailing slash too.
    spellings = {rest, rest.upper(), rest[0].upper() + rest[1:]}
    for prefix in _SPELLINGS:
        for spelt in spellings:
            for path in (prefix + spelt, prefix + spelt + "/"):
                assert not classify(method, path).offered, (method, path)


@pytest.mark.parametrize(
    "rest",
    [
        # the openai SDK 3.57.0's model calls that make and name nothing stored:
        # completions.create, moderations.create, audio.speech, audio.transcriptions and
        # audio.translations .create, images.edit, images.create_variation
        "openai/completions",
        "openai/moderations",
        "openai/audio/speech",
        "openai/audio/transcriptions",
        "openai/audio/translations",
        "openai/images/edits",
        "openai/images/variations",
    ],
)
def test_stateless_openai_calls_are_offered_unmetered_in_every_spelling(rest: str):
    spellings = {rest, rest.upper(), rest[0].upper() + rest[1:]}
    for prefix in _SPELLINGS:
        for spelt in spellings:
            for path in (prefix + spelt, prefix + spelt + "/"):
                route = classify("POST", path)
                assert (route.action, route.offered) == (Action.UNMETERED, True), path
                assert route.unmetered is not None
                assert route.unmetered.kind is EndpointKind.OPENAI_OTHER


@pytest.mark.parametrize(
    "rest",
    [
        "models",
        "models/gemini-2.5-flash",
        "tunedModels",
        "tunedModels/t-1",
        "openai/models",
        "openai/models/gemini-2.5-flash",
    ],
)
def test_free_reads_are_offered_in_every_spelling(rest: str):
    spellings = {rest, rest.upper(), rest[0].upper() + rest[1:]}
    for prefix in _SPELLINGS:
        for spelt in spellings:
            for path in (prefix + spelt, prefix + spelt + "/"):
                route = classify("GET", path)
                assert (route.action, route.offered) == (Action.FORWARD, True), path
                assert route.unmetered is None and not route.metered
        # reading only: with any other method the path is unlisted (a POST under openai/
        # is the OpenAI-compatible surface's, recorded unmetered: UNMETERED_ROUTES)
        for method in ("POST", "PATCH", "PUT", "DELETE", "HEAD"):
            route = classify(method, "/v1beta/" + rest)
            assert route.action in (Action.UNLISTED, Action.UNMETERED), (method, rest)


@pytest.mark.parametrize(
    ("path", "offered"),
    [
        # a tuned model's tuning, readable like the tuned model itself
        ("/v1beta/tunedModels/t-1/operations/o-1", True),
        ("/v1/TUNEDMODELS/t-1/operations/o-1", True),
        # operations of resources the proxy does not know: passthrough mode only
        ("/v1beta/generatedFiles/g-1/operations/o-1", False),
        ("/v1beta/corpora/c-1/operations/o-1", False),
        ("/v1alpha/corpora/c-1/documents/d-1/operations/o-1", False),
    ],
)
def test_operation_polls_are_recorded_and_offered_only_for_tuned_models(path: str, offered: bool):
    route = classify("GET", path)
    assert route.action is Action.UNMETERED
    assert route.unmetered is not None
    assert route.unmetered.kind is EndpointKind.OPERATION_GET
    assert route.offered is offered


def test_unmetered_kinds_are_bounded_and_apart_from_metered_ones():
    # the table's rows and the unlisted writes' one (passthrough mode)
    kinds = {row.kind for row in UNMETERED_ROUTES} | {UNLISTED_WRITE.kind}
    metered = {
        EndpointKind.INTERACTION_CREATE,
        EndpointKind.INTERACTION_GET,
        EndpointKind.GENERATE_CONTENT,
        EndpointKind.STREAM_GENERATE_CONTENT,
        EndpointKind.EMBED_CONTENT,
        EndpointKind.BATCH_EMBED_CONTENTS,
        EndpointKind.PREDICT,
        EndpointKind.PREDICT_LONG_RUNNING,
        EndpointKind.OPENAI_CHAT_COMPLETIONS,
        EndpointKind.OPENAI_EMBEDDINGS,
        EndpointKind.OPENAI_IMAGES,
        EndpointKind.BATCH_RESULT,
        EndpointKind.CACHED_CONTENT_CREATE,
        EndpointKind.CACHED_CONTENT_UPDATE,
        EndpointKind.CACHED_CONTENT_DELETE,
        EndpointKind.LIVE_SESSION,
    }
    # Rows now metered: their kinds stay, for the records stored before.
    retired = {
        EndpointKind.BATCH_GENERATE_CONTENT,
        EndpointKind.ASYNC_BATCH_EMBED_CONTENT,
        EndpointKind.BATCH_GET,
    }
    assert kinds.isdisjoint(metered | retired)
    # every other kind is some row's: the metric's label values are the table's and
    # "unlisted", never a path
    assert kinds | metered | retired == set(EndpointKind)
    assert len(kinds) == 5


@pytest.mark.parametrize(
    ("method", "path", "action", "model", "resource"),
    [
        (
            "POST",
            "/v1beta/models/imagen-4.0-generate-001:predict",
            Action.PREDICT,
            "imagen-4.0-generate-001",
            None,
        ),
        (
            "POST",
            "/v1/models/veo-3.1-generate-preview:predictLongRunning",
            Action.PREDICT_LONG_RUNNING,
            "veo-3.1-generate-preview",
            None,
        ),
        (
            "POST",
            "/v1beta/MODELS/veo-2.0-generate-001:PREDICTLONGRUNNING",
            Action.PREDICT_LONG_RUNNING,
            "veo-2.0-generate-001",
            None,
        ),
        (
            "GET",
            "/v1beta/models/veo-3.1-generate-preview/operations/op9",
            Action.OPERATION_GET,
            "veo-3.1-generate-preview",
            "models/veo-3.1-generate-preview/operations/op9",
        ),
        # another spelling of the collections names the same canonical operation
        (
            "GET",
            "/v1alpha/Models/veo-3.1-generate-preview/Operations/op9/",
            Action.OPERATION_GET,
            "veo-3.1-generate-preview",
            "models/veo-3.1-generate-preview/operations/op9",
        ),
        (
            "DELETE",
            "/v1beta/models/veo-3/operations/op9",
            Action.OPERATION_OTHER,
            "veo-3",
            "models/veo-3/operations/op9",
        ),
        (
            "POST",
            "/v1beta/models/veo-3/operations/op9:cancel",
            Action.OPERATION_OTHER,
            "veo-3",
            "models/veo-3/operations/op9",
        ),
        # what the proxy does not know on an operation, and the listing, are refused
        (
            "POST",
            "/v1beta/models/veo-3/operations/op9:wait",
            Action.RESOURCE_UNKNOWN,
            "veo-3",
            "models/veo-3/operations/op9",
        ),
        (
            "GET",
            "/v1beta/models/veo-3/operations/op9/more",
            Action.RESOURCE_UNKNOWN,
            "veo-3",
            "models/veo-3/operations/op9",
        ),
        ("GET", "/v1beta/models/veo-3/operations", Action.RESOURCE_UNKNOWN, "veo-3", None),
        ("GET", "/v1beta/models/veo-3/operations/", Action.RESOURCE_UNKNOWN, "veo-3", None),
    ],
)
def test_media_routes(
    method: str, path: str, action: Action, model: str | None, resource: str | None
):
    route = classify(method, path)
    assert (route.action, route.model, route.resource) == (action, model, resource)
    assert route.unmetered is None


def test_media_metering():
    assert classify("POST", "/v1beta/models/m:predict").endpoint is EndpointKind.PREDICT
    veo = classify("POST", "/v1beta/models/m:predictLongRunning")
    assert veo.endpoint is EndpointKind.PREDICT_LONG_RUNNING
    # the poll that sees the operation done carries the bill of the create
    poll = classify("GET", "/v1beta/models/m/operations/o")
    assert poll.endpoint is EndpointKind.PREDICT_LONG_RUNNING
    for path in ("/v1beta/models/m/operations/o:cancel", "/v1beta/files/f:download"):
        assert not classify("POST" if "cancel" in path else "GET", path).metered
    # a File Search store's operations are its owner's, and free
    store_operation = classify("GET", "/v1beta/fileSearchStores/s/operations/o")
    assert store_operation.action is Action.STORE_METHOD
    assert not store_operation.metered


@pytest.mark.parametrize(
    ("path", "action", "kind"),
    [
        (
            "/v1beta/openai/chat/completions",
            Action.OPENAI_CHAT,
            EndpointKind.OPENAI_CHAT_COMPLETIONS,
        ),
        ("/v1/openai/chat/completions", Action.OPENAI_CHAT, EndpointKind.OPENAI_CHAT_COMPLETIONS),
        # every spelling the upstream might route the same way stays on the meter
        (
            "/v1beta/OpenAI/Chat/Completions",
            Action.OPENAI_CHAT,
            EndpointKind.OPENAI_CHAT_COMPLETIONS,
        ),
        (
            "/v1beta/openai/chat/completions/",
            Action.OPENAI_CHAT,
            EndpointKind.OPENAI_CHAT_COMPLETIONS,
        ),
        ("/v1beta/openai/embeddings", Action.OPENAI_EMBED, EndpointKind.OPENAI_EMBEDDINGS),
        ("/v1alpha/openai/Embeddings/", Action.OPENAI_EMBED, EndpointKind.OPENAI_EMBEDDINGS),
        (
            "/upload/v1beta/openai/chat/completions",
            Action.OPENAI_CHAT,
            EndpointKind.OPENAI_CHAT_COMPLETIONS,
        ),
        ("/v1beta/openai/images/generations", Action.OPENAI_IMAGES, EndpointKind.OPENAI_IMAGES),
        ("/v1/OpenAI/Images/Generations/", Action.OPENAI_IMAGES, EndpointKind.OPENAI_IMAGES),
        (
            "/upload/v1alpha/openai/images/generations",
            Action.OPENAI_IMAGES,
            EndpointKind.OPENAI_IMAGES,
        ),
    ],
)
def test_the_openai_surface_is_metered(path: str, action: Action, kind: EndpointKind):
    route = classify("POST", path)
    assert route.action is action
    assert route.endpoint is kind
    assert route.metered
    assert route.unmetered is None
    # the model is the body's, never the path's
    assert route.model is None
    assert not classify("GET", path).metered


def test_openai_meta_reads_the_body_model_and_stream():
    chat = classify("POST", "/v1beta/openai/chat/completions")
    body = {"model": "models/gemini-2.5-flash", "stream": True, "service_tier": "priority"}
    meta = request_meta(chat, body)
    assert meta.model == "gemini-2.5-flash"
    assert meta.stream is True
    # OpenAI's tier names are not Gemini's: not read as the requested tier
    assert meta.service_tier is None
    embed = classify("POST", "/v1beta/openai/embeddings")
    assert request_meta(embed, {"model": "gemini-embedding-001", "stream": "yes"}).stream is False
    assert request_meta(embed, {"model": 7}).model is None
    # Google ignores ``stream`` on image generation: the answer says whether it streamed
    images = classify("POST", "/v1beta/openai/images/generations")
    meta = request_meta(images, {"model": "models/imagen-4.0-generate-001", "stream": True})
    assert (meta.model, meta.stream) == ("imagen-4.0-generate-001", False)


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


# --- owned resources: cached contents and files -----------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "action", "resource"),
    [
        ("POST", "/v1beta/cachedContents", Action.CACHE_CREATE, None),
        ("POST", "/upload/v1beta/cachedContents/", Action.CACHE_CREATE, None),
        ("GET", "/v1/cachedContents", Action.CACHE_LIST, None),
        ("GET", "/v1beta/cachedContents/c-1", Action.CACHE_GET, "cachedContents/c-1"),
        ("GET", "/v1beta/CACHEDCONTENTS/c-1/", Action.CACHE_GET, "cachedContents/c-1"),
        ("PATCH", "/v1alpha/cachedContents/c-1", Action.CACHE_UPDATE, "cachedContents/c-1"),
        ("DELETE", "/v1beta/cachedContents/C-1", Action.CACHE_DELETE, "cachedContents/C-1"),
        ("POST", "/upload/v1beta/files", Action.FILE_UPLOAD, None),
        ("POST", "/upload/v1beta/files/", Action.FILE_UPLOAD, None),
        ("POST", "/v1beta/files", Action.FILE_UPLOAD, None),
        ("POST", "/v1beta/files:register", Action.FILE_UPLOAD, None),
        ("GET", "/v1beta/files", Action.FILE_LIST, None),
        ("GET", "/v1beta/files/f-1", Action.FILE_GET, "files/f-1"),
        ("GET", "/upload/v1beta/Files/f-1", Action.FILE_GET, "files/f-1"),
        ("DELETE", "/v1beta/files/f-1/", Action.FILE_DELETE, "files/f-1"),
        ("GET", "/v1beta/files/f-1:download", Action.FILE_DOWNLOAD, "files/f-1"),
        ("GET", "/download/v1beta/files/f-1:Download", Action.FILE_DOWNLOAD, "files/f-1"),
        # anything else on a cache or a file is refused, never forwarded
        ("POST", "/v1beta/cachedContents/c-1", Action.RESOURCE_UNKNOWN, None),
        ("PUT", "/v1beta/cachedContents/c-1", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/cachedContents/c-1/contents", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/cachedContents/c-1:x", Action.RESOURCE_UNKNOWN, None),
        ("DELETE", "/v1beta/cachedContents", Action.RESOURCE_UNKNOWN, None),
        ("PATCH", "/v1beta/files/f-1", Action.RESOURCE_UNKNOWN, None),
        ("POST", "/v1beta/files/f-1:download", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/files/f-1/x", Action.RESOURCE_UNKNOWN, None),
        ("DELETE", "/v1beta/files", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/filesx", Action.UNLISTED, None),
        # a File Search store, and everything under it, is checked as the store
        ("POST", "/v1beta/fileSearchStores", Action.STORE_CREATE, None),
        ("GET", "/v1alpha/filesearchstores/", Action.STORE_LIST, None),
        ("GET", "/v1beta/fileSearchStores/s", Action.STORE_METHOD, "fileSearchStores/s"),
        ("DELETE", "/v1/fileSearchStores/s/", Action.STORE_METHOD, "fileSearchStores/s"),
        ("GET", "/upload/v1beta/FILESEARCHSTORES/s", Action.STORE_METHOD, "fileSearchStores/s"),
        ("GET", "/v1beta/fileSearchStores/s/documents", Action.STORE_METHOD, "fileSearchStores/s"),
        (
            "DELETE",
            "/v1beta/fileSearchStores/s/Documents/d-1/",
            Action.STORE_METHOD,
            "fileSearchStores/s",
        ),
        (
            "GET",
            "/v1beta/fileSearchStores/s/upload/operations/o",
            Action.STORE_METHOD,
            "fileSearchStores/s",
        ),
        ("GET", "/v1beta/fileSearchStores/s/media/m", Action.STORE_METHOD, "fileSearchStores/s"),
        (
            "POST",
            "/v1beta/fileSearchStores/s:ImportFile",
            Action.STORE_IMPORT,
            "fileSearchStores/s",
        ),
        (
            "POST",
            "/upload/v1beta/fileSearchStores/s:uploadToFileSearchStore",
            Action.STORE_UPLOAD,
            "fileSearchStores/s",
        ),
        (
            "POST",
            "/v1beta/fileSearchStores/s:uploadToFileSearchStore",
            Action.STORE_UPLOAD,
            "fileSearchStores/s",
        ),
        ("PATCH", "/v1beta/fileSearchStores/s", Action.RESOURCE_UNKNOWN, None),
        ("POST", "/v1beta/fileSearchStores/s/documents", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/fileSearchStores/s/documents/d/chunks", Action.RESOURCE_UNKNOWN, None),
        ("POST", "/v1beta/fileSearchStores/s/operations/o:cancel", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/fileSearchStores/s/operations", Action.RESOURCE_UNKNOWN, None),
        ("DELETE", "/v1beta/fileSearchStores", Action.RESOURCE_UNKNOWN, None),
        ("GET", "/v1beta/fileSearchStoresx", Action.UNLISTED, None),
        # operations by a bare id: nobody's, so nobody's to read
        ("GET", "/v1beta/operations/op-2", Action.BARE_OPERATION, None),
        ("GET", "/v1/operations", Action.BARE_OPERATION, None),
        ("DELETE", "/v1/Operations/op-2/", Action.BARE_OPERATION, None),
        ("POST", "/upload/v1alpha/operations/op-2:cancel", Action.BARE_OPERATION, None),
    ],
)
def test_owned_resources(method: str, path: str, action: Action, resource: str | None):
    route = classify(method, path)
    assert route.action is action
    assert route.resource == resource


def test_a_file_search_import_is_still_recorded_unmetered():
    for method, path in (
        ("POST", "/v1beta/fileSearchStores/s:importFile"),
        ("POST", "/upload/v1beta/fileSearchStores/s:uploadToFileSearchStore"),
    ):
        route = classify(method, path)
        assert route.unmetered is not None
        assert route.unmetered.kind is EndpointKind.FILE_SEARCH_IMPORT
        assert route.endpoint is None


def test_cache_storage_is_metered_and_reads_are_not():
    assert classify("POST", "/v1/cachedContents").endpoint is EndpointKind.CACHED_CONTENT_CREATE
    assert classify("PATCH", "/v1/cachedContents/c").endpoint is (
        EndpointKind.CACHED_CONTENT_UPDATE
    )
    assert classify("DELETE", "/v1/cachedContents/c").endpoint is (
        EndpointKind.CACHED_CONTENT_DELETE
    )
    for method, path in (("GET", "/v1/cachedContents/c"), ("GET", "/v1/files/f")):
        assert not classify(method, path).metered


# --- the edge: pure checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "problem"),
    [
        ("/v1beta/interactions/abc", None),
        ("/v1beta/interactions/abc/", None),
        ("/v1beta/models/m:generateContent?alt=sse&x=%2F..", None),  # the query is not the path
        ("/v1beta/models/gemini%3Agenerate", None),
        ("/v1beta/./interactions/abc", "segment"),
        ("/v1beta//interactions", "segment"),
        ("/v1beta/interactions/abc//", "segment"),
        ("/v1beta/a/../interactions", "segment"),
        ("/v1beta/interactions/..", "segment"),
        ("/v1beta/%2e%2e/x", "encoded"),
        ("/v1beta/interactions%2Fabc", "encoded"),
        ("/v1beta/interactions%5cabc", "encoded"),
        ("/v1beta/interactions%25abc", "encoded"),
        ("/v1beta\\interactions", "backslash"),
    ],
)
def test_path_problem(raw_path: str, problem: str | None):
    found = path_problem(raw_path)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_method_override_reads_every_spelling():
    query = MultiDict[str]()
    for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        assert method_override(CIMultiDict({name: "GET"}), query) == "GET"
    for name in ("$httpMethod", "httpMethod", "$HTTPMETHOD"):
        assert method_override(CIMultiDict(), MultiDict({name: "DELETE"})) == "DELETE"
    assert method_override(CIMultiDict({"X-Other": "GET"}), MultiDict({"method": "x"})) is None


@pytest.mark.parametrize(
    ("headers", "query", "refused"),
    [
        ({}, {"fields": "id"}, True),
        ({}, {"$fields": "id"}, True),
        ({"x-goog-fieldmask": "id"}, {}, True),
        ({}, {"alt": "proto"}, True),
        ({}, {"$alt": "media"}, True),
        ({}, {"callback": "f"}, True),
        ({}, {"$ct": "application/x-protobuf"}, True),
        ({}, {"alt": "sse"}, False),
        ({}, {"$alt": "JSON"}, False),
        ({}, {"prettyPrint": "false", "$.xgafv": "2"}, False),
    ],
)
def test_masking_parameter(headers: dict[str, str], query: dict[str, str], refused: bool):
    found = masking_parameter(CIMultiDict(headers), MultiDict(query))
    assert (found is not None) is refused


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"a": 1, "a": 2}', "twice"),
        (b'{"a": {"b": 1, "b": 1}}', "twice"),
        (b'[{"x": 1}, {"y": 1, "\\u0079": 2}]', "twice"),
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[" * 101 + b"]" * 101, "too deeply"),
        (b'{"a": [' * 50 + b'{"a": 1}' + b"]}" * 50, "too deeply"),  # 101 levels, mixed
        (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    ],
)
def test_strict_json_refuses_what_it_cannot_check(body: bytes, why: str):
    with pytest.raises(BodyRefused, match=why):
        strict_json(body)


def test_strict_json_reads_ordinary_bodies():
    assert strict_json(b"") is None
    assert strict_json(b'{"a": [1, {"b": 2}], "c": null}') == {"a": [1, {"b": 2}], "c": None}
    assert strict_json(b"[" * 100 + b"]" * 100) is not None
    assert strict_json(b'{"a": [' * 50 + b"1" + b"]}" * 50) is not None  # 100 levels, mixed


def test_paths_sprayed_at_the_proxy_keep_a_bounded_number_of_short_answers():
    # Routes and path checks are kept per path (routes._PATHS_KEPT of them, each path at
    # most routes._KEPT_PATH_LENGTH long): a client sending endless distinct paths, long
    # ones included, must not grow what the proxy holds, nor change a single answer.
    routes._classify_kept.cache_clear()
    routes._path_problem_kept.cache_clear()
    model = "m" * 300  # a path over the kept length
    long = f"/v1beta/models/{model}:generateContent"
    assert classify("POST", long).action is Action.GENERATE
    assert classify("POST", long).model == model
    assert path_problem(long + "//x") == "an empty, '.' or '..' segment"
    assert routes._classify_kept.cache_info().currsize == 0
    assert routes._path_problem_kept.cache_info().currsize == 0
    for i in range(routes._PATHS_KEPT + 500):
        path = f"/v1beta/models/m{i}:generateContent"
        assert classify("POST", path).model == f"m{i}"
        assert path_problem(path) is None
    assert routes._classify_kept.cache_info().currsize == routes._PATHS_KEPT
    assert routes._path_problem_kept.cache_info().currsize == routes._PATHS_KEPT
    # what is kept is the same answer as a fresh reading
    assert classify("POST", "/v1beta/models/m1:streamGenerateContent") == routes._classify(
        "POST", "/v1beta/models/m1:streamGenerateContent"
    )


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be", "utf-32-le", "utf-8-sig"])
def test_strict_json_decodes_bytes_as_json_loads_does(encoding: str):
    text = '{"contents": [{"parts": [{"text": "caf\u00e9 \u2615"}]}], "model": "m"}'
    body = text.encode(encoding)
    # the standard library's reading of the same bytes is the oracle
    assert strict_json(body) == json.loads(body) == json.loads(text)


def test_strict_json_refuses_a_text_with_a_byte_order_mark_as_json_loads_does():
    with pytest.raises(ValueError, match="BOM"):
        json.loads('\ufeff{"a": 1}')
    with pytest.raises(BodyRefused, match="not valid JSON"):
        strict_json('\ufeff{"a": 1}')
    assert strict_json('{"a": 1}') == {"a": 1}


def test_previous_interaction_ids_in_every_spelling_and_place():
    body = {"previous_interaction_id": "a", "previousInteractionId": "b"}
    query = MultiDict([("previous_interaction_id", "c"), ("previousInteractionId", "d")])
    assert previous_interaction_ids(body, query) == {"a", "b", "c", "d"}
    assert previous_interaction_ids({"previous_interaction_id": None}, MultiDict()) == set()
    with pytest.raises(BodyRefused):
        previous_interaction_ids({"previousInteractionId": 3}, MultiDict())
    with pytest.raises(BodyRefused):
        previous_interaction_ids(None, MultiDict({"previous_interaction_id": ""}))
    meta = request_meta(classify("POST", "/v1beta/interactions"), {"previousInteractionId": "b"})
    assert meta.previous_interaction_id == "b"
