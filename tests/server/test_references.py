"""The references walker: every spelling of a cache or file a body can name, and no more."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from proxy.server.references import Reference, UncheckedReference, references
from proxy.storage.schema import ResourceKind

CACHE = Reference(ResourceKind.CACHED_CONTENT, "cachedContents/abc123")
FILE = Reference(ResourceKind.FILE, "files/f00d")


@pytest.mark.parametrize(
    "body",
    [
        {"cachedContent": "cachedContents/abc123"},
        {"cached_content": "cachedContents/abc123"},
        {"cachedContent": "abc123"},  # the SDK adds the prefix to a bare id; so might Google
        {"cachedContent": "  cachedContents/abc123 "},
        {"cachedContent": "CACHEDCONTENTS/abc123"},
        {"cachedContent": "projects/p/locations/us/cachedContents/abc123"},
        # an inline batch request, nested as the Batch API nests it
        {
            "batch": {
                "inputConfig": {
                    "requests": {
                        "requests": [{"request": {"cachedContent": "cachedContents/abc123"}}]
                    }
                }
            }
        },
        {"generateContentRequest": {"cached_content": "cachedContents/abc123"}},  # countTokens
    ],
)
def test_every_spelling_of_a_cache(body: object):
    assert references(body) == {CACHE}


FILE_URL = "https://generativelanguage.googleapis.com/v1beta/files/f00d"


@pytest.mark.parametrize(
    "part",
    [
        {"fileData": {"fileUri": FILE_URL, "mimeType": "text/plain"}},
        {"file_data": {"file_uri": FILE_URL}},
        {"fileData": {"fileUri": "files/f00d"}},
        {"fileData": {"fileUri": "FILES/f00d"}},
        {"fileData": {"fileUri": "http://127.0.0.1:9/v1/files/f00d"}},  # any host
        {"fileData": {"fileUri": "https://evil.example/v1alpha/FILES/f00d?alt=media"}},
        {"fileData": {"fileUri": "https://x/v1beta/files%2Ff00d"}},  # decoded, as a server may
        {"fileData": {"fileUri": f"{FILE_URL}:download?alt=media"}},  # a generated video's
        {"type": "document", "uri": FILE_URL},  # an Interactions content block
        {"fileName": "files/f00d"},  # a batch's input file, a File Search import
        {"file_name": "files/f00d"},
    ],
)
def test_every_spelling_of_a_file(part: object):
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}, part]}]}
    assert references(body) == {FILE}


@pytest.mark.parametrize(
    "body",
    [
        {"contents": [{"parts": [{"text": "files/f00d and cachedContents/abc123"}]}]},
        {"contents": [{"parts": [{"fileData": {"fileUri": "https://youtu.be/x"}}]}]},
        {"fileData": {"fileUri": "https://example.com/files/report.pdf"}},  # not /{v}/files/
        {"fileData": {"fileUri": "https://example.com/static/v1/files/a/b.pdf"}},
        {"fileData": {"fileUri": "gs://bucket/files/a.pdf"}},
        {"uri": 7, "fileUri": None, "cachedContent": None},
        {"name": "files/f00d", "displayName": "cachedContents/abc123"},
        "files/f00d",
        None,
        [],
    ],
)
def test_what_is_not_a_reference(body: object):
    assert references(body) == set()


@pytest.mark.parametrize(
    "body",
    [
        {"cachedContent": 5},
        {"cachedContent": ["cachedContents/abc123"]},
        {"cachedContent": {"name": "cachedContents/abc123"}},
        {"cachedContent": "cachedContents/abc123/extra"},
        {"cachedContent": "https://host/v1beta/cachedContents/abc123"},
        {"fileData": {"fileUri": "files/a/b"}},
        {"fileData": {"fileUri": "files/"}},
        {"fileData": {"fileUri": "files/a%2Fb"}},
        {"fileData": {"fileUri": "https://h/v1beta/files/.."}},
    ],
)
def test_an_uncheckable_reference_is_refused(body: object):
    with pytest.raises(UncheckedReference):
        references(body)


def test_query_parameters_and_many_references():
    body = {
        "contents": [
            {"parts": [{"fileData": {"fileUri": "files/one"}}, {"fileData": {"fileUri": FILE_URL}}]}
        ],
        "cachedContent": "cachedContents/abc123",
    }
    query = MultiDict([("cachedContent", "cachedContents/other"), ("alt", "sse")])
    assert references(body, query) == {
        CACHE,
        FILE,
        Reference(ResourceKind.FILE, "files/one"),
        Reference(ResourceKind.CACHED_CONTENT, "cachedContents/other"),
    }


def test_a_deep_body_does_not_exhaust_the_stack():
    body: object = {"cachedContent": "abc123"}
    for _ in range(100_000):
        body = {"x": [body]}
    assert references(body) == {CACHE}


STORE = Reference(ResourceKind.FILE_SEARCH_STORE, "fileSearchStores/docs-1a2b")


@pytest.mark.parametrize(
    "body",
    [
        # what google-genai 3.6.1 sends: the tool's key camelCased, the FileSearch fields as
        # the model dumps them (``models._Tool_to_mldev`` copies ``file_search`` whole)
        {"tools": [{"fileSearch": {"file_search_store_names": ["fileSearchStores/docs-1a2b"]}}]},
        {"tools": [{"fileSearch": {"fileSearchStoreNames": ["fileSearchStores/docs-1a2b"]}}]},
        {"tools": [{"file_search": {"file_search_store_names": ["docs-1a2b"]}}]},
        {"tools": [{"fileSearch": {"fileSearchStoreNames": ["FILESEARCHSTORES/docs-1a2b"]}}]},
        {
            "tools": [
                {"fileSearch": {"fileSearchStoreNames": ["/v1beta/fileSearchStores/docs-1a2b"]}}
            ]
        },
        # the Interactions API's tool (google-genai _gaos/types/interactions/filesearch.py)
        {
            "tools": [
                {"type": "file_search", "file_search_store_names": ["fileSearchStores/docs-1a2b"]}
            ]
        },
        # a cached content's tools, and a countTokens request's
        {
            "generateContentRequest": {
                "tools": [
                    {"fileSearch": {"fileSearchStoreNames": [" fileSearchStores/docs-1a2b "]}}
                ]
            }
        },
    ],
)
def test_every_spelling_of_a_file_search_store(body: object):
    assert references(body) == {STORE}


@pytest.mark.parametrize(
    "names",
    ["fileSearchStores/docs-1a2b", ["fileSearchStores/a/documents/b"], [7], [""], [None], {"n": 1}],
)
def test_a_store_name_the_proxy_cannot_read_is_refused(names: object):
    with pytest.raises(UncheckedReference):
        references({"tools": [{"fileSearch": {"fileSearchStoreNames": names}}]})


def test_stores_with_caches_and_files():
    body = {
        "cachedContent": "cachedContents/abc123",
        "contents": [{"parts": [{"fileData": {"fileUri": "files/f00d"}}]}],
        "tools": [{"fileSearch": {"fileSearchStoreNames": ["fileSearchStores/docs-1a2b", "x"]}}],
    }
    assert references(body) == {
        CACHE,
        FILE,
        STORE,
        Reference(ResourceKind.FILE_SEARCH_STORE, "fileSearchStores/x"),
    }
    # no names at all is no reference
    assert references({"tools": [{"fileSearch": {"fileSearchStoreNames": None}}]}) == set()


def test_an_openai_chat_body_names_caches_in_every_spelling():
    # The OpenAI-compatible endpoint's extra_body.google.cached_content, as its clients
    # write it, and every other place the one walker reads a cache from.
    body = {
        "cached_content": "a1",
        "google": {"cachedContent": "cachedContents/b2"},
        "extra_body": {"google": {"cached_content": "/v1beta/cachedContents/c3"}},
        "extraBody": {"google": {"cachedContent": "CACHEDCONTENTS/d4"}, "cached_content": "e5"},
    }
    assert references(body) == {
        Reference(ResourceKind.CACHED_CONTENT, f"cachedContents/{cache_id}")
        for cache_id in ("a1", "b2", "c3", "d4", "e5")
    }
    assert references({"extra_body": {"google": {"cached_content": None}}}) == set()
    assert references({"extra_body": "x", "google": []}) == set()


@pytest.mark.parametrize(
    "value", [7, "", "  ", "cachedContents/", "cachedContents/a/b", "files/a", "a?b", "a#b"]
)
def test_a_cache_name_the_proxy_cannot_read_is_refused(value: object):
    with pytest.raises(UncheckedReference):
        references({"extra_body": {"google": {"cached_content": value}}})
    with pytest.raises(UncheckedReference):
        references({"cachedContent": value})  # the same in the native APIs' bodies
