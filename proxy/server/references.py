"""Which owned resources a request body names: pure, one walk over the JSON.

Behind one shared upstream key, a request could use someone else's cached content or
uploaded file simply by naming it. ``server.admission.admit`` calls ``references`` on every
JSON body it reads (generate, stream, countTokens, embeddings, interactions, cachedContents
create, batch create, ...) and checks each name against its owner before forwarding.

What counts as a reference, wherever it sits in the body (inline batch requests and
nested contents included):

- ``cachedContent`` / ``cached_content`` (Google's JSON parser takes a field by either
  name): ``cachedContents/{id}``, the bare id (the SDK's ``t_cached_content_name`` adds the
  prefix, so the id alone may be meant), or a Vertex-style
  ``projects/…/locations/…/cachedContents/{id}``. Anything else that is not empty or null
  is refused: it cannot be checked.
- ``fileUri`` / ``file_uri`` (``fileData``), ``uri`` (the Interactions API's content
  blocks) and ``fileName`` / ``file_name`` (a batch's input file, a File Search import):
  ``files/{id}``, or an http(s) URL whose path is ``/{version}/files/{id}`` on any host
  (the Files API's ``uri``, e.g. ``https://generativelanguage.googleapis.com/v1beta/files/
  abc``), percent-decoded, ``:download`` and a query allowed. The host is not trusted to
  tell a Files API URL from another one, so any host with that path counts. Any other
  string (a YouTube or public URL, a ``gs://`` object) is not a Files API file. A string
  that starts ``files/`` but does not name one file (``files/a/b``) is refused.

- ``fileSearchStoreNames`` / ``file_search_store_names`` (the File Search tool:
  ``tools[].fileSearch`` in generateContent, cachedContents and batch requests, and
  ``tools[]`` of ``type: "file_search"`` in the Interactions API; google-genai 3.6.1
  ``types.FileSearch`` and ``_gaos/types/interactions/filesearch.py``; Google's "File
  Search" guide, https://ai.google.dev/gemini-api/docs/file-search, read 2026-11-29): a
  list of ``fileSearchStores/{id}``, a version prefix or the bare id read as that store.
  A value that is not a list of such strings is refused.

Names come back canonical (``cachedContents/{id}``, ``files/{id}``,
``fileSearchStores/{id}``, the id as written: an id in another case is another name,
which its owner check then refuses unless owned).
``UncheckedReference`` says why a body is refused instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from multidict import MultiMapping

from ..storage.schema import ResourceKind
from .routes import JSON_CONTAINERS

__all__ = ["CACHE_FIELDS", "Reference", "UncheckedReference", "references"]

CACHE_FIELDS = ("cachedContent", "cached_content")
_FILE_FIELDS = frozenset({"fileUri", "file_uri", "uri", "fileName", "file_name"})
# A leading "/" and a version segment are read as the same name (the OpenAI-compatible
# endpoint's ``extra_body.google.cached_content`` is written either way by its clients).
_CACHE_NAME = re.compile(
    r"^/?(?:v\d+[a-z0-9]*/)?(?:projects/[^/]+/locations/[^/]+/)?"
    r"cachedContents/(?P<id>[^/?#\s]+)$",
    re.IGNORECASE,
)
_CACHE_ID = re.compile(r"^[^/?#\s]+$")
_VERSION = re.compile(r"^v\d+[a-z0-9]*$", re.IGNORECASE)
_STORE_FIELDS = frozenset({"fileSearchStoreNames", "file_search_store_names"})
_STORE_NAME = re.compile(
    r"^(?:v\d+[a-z0-9]*/)?(?:fileSearchStores/)?(?P<id>[^/?#\s]+)$", re.IGNORECASE
)


_REFERENCE_FIELDS = frozenset(CACHE_FIELDS) | _FILE_FIELDS | _STORE_FIELDS


class UncheckedReference(ValueError):
    """A body names a cache, file or store in a form the proxy cannot resolve to one name."""


@dataclass(frozen=True, slots=True, order=True)
class Reference:
    """One owned resource a request names."""

    kind: ResourceKind
    name: str  # canonical: "cachedContents/{id}", "files/{id}" or "fileSearchStores/{id}"


def references(body: object, query: MultiMapping[str] | None = None) -> set[Reference]:
    """Every cached content, file and File Search store ``body`` (and, for caches, the
    query) names.

    Raises ``UncheckedReference`` for a reference the proxy cannot check. The walk is
    iterative, so a deeply nested body cannot exhaust the stack.
    """
    found: set[Reference] = set()
    if query is not None:
        for field in CACHE_FIELDS:
            for value in query.getall(field, []):
                _add(found, cache_reference(value))
    stack: list[object] = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _REFERENCE_FIELDS:  # one look-up for the keys that name nothing
                    if key in CACHE_FIELDS:
                        _add(found, cache_reference(value))
                    elif key in _FILE_FIELDS:
                        if isinstance(value, str):
                            _add(found, file_reference(value))
                    else:
                        found.update(store_references(value))
                if isinstance(value, JSON_CONTAINERS):
                    stack.append(value)
        elif isinstance(item, list):
            for child in item:
                if isinstance(child, JSON_CONTAINERS):
                    stack.append(child)
    return found


def _add(found: set[Reference], reference: Reference | None) -> None:
    if reference is not None:
        found.add(reference)


def cache_reference(value: object) -> Reference | None:
    """The cached content a ``cachedContent`` value names (None: none is named)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        # An empty name may be read as no cache by one parser and refused by another.
        raise UncheckedReference("cachedContent must be a non-empty string")
    text = value.strip()
    m = _CACHE_NAME.match(text)
    if m is not None:
        cache_id = m.group("id")
    elif _CACHE_ID.match(text):
        cache_id = text
    else:
        raise UncheckedReference("cachedContent must be a cachedContents/{id} name")
    return Reference(ResourceKind.CACHED_CONTENT, f"cachedContents/{cache_id}")


def file_reference(value: str) -> Reference | None:
    """The Files API file a URI or name names (None: not a Files API file)."""
    text = value.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        segments = unquote(parts.path).split("/")[1:]
        if len(segments) != 3 or not _VERSION.match(segments[0]):
            return None
        if segments[1].lower() != "files":
            return None
        file_id = segments[2]
    elif text.lower().startswith("files/"):
        file_id = unquote(text[len("files/") :]).partition("?")[0]
    else:
        return None
    file_id = file_id.partition(":")[0]  # "files/{id}:download"
    if not file_id or "/" in file_id or file_id in (".", ".."):
        raise UncheckedReference(f"{value!r} does not name one file")
    return Reference(ResourceKind.FILE, f"files/{file_id}")


def store_references(value: object) -> set[Reference]:
    """The File Search stores a ``fileSearchStoreNames`` value names."""
    if value is None:
        return set()
    if not isinstance(value, list):
        raise UncheckedReference("fileSearchStoreNames must be a list of store names")
    found = set()
    for item in value:
        text = item.strip().lstrip("/") if isinstance(item, str) else ""
        m = _STORE_NAME.match(text)
        if m is None or m.group("id") in (".", ".."):
            raise UncheckedReference(f"{item!r} does not name one File Search store")
        found.add(Reference(ResourceKind.FILE_SEARCH_STORE, f"fileSearchStores/{m.group('id')}"))
    return found


def names_of(refs: Iterable[Reference], kind: ResourceKind) -> list[str]:
    """The names of one kind, sorted (the order owner checks run in)."""
    return sorted(r.name for r in refs if r.kind is kind)


def filtered_listing(payload: object, field: str, kept: list[object]) -> bytes:
    """A list response (``files``, ``cachedContents``, ``operations``, ...) cut down to the
    ``kept`` items and the page token: nothing else of it is passed on, since a field the
    proxy does not know could name someone else's resources. An empty list is left out
    altogether, as Google's JSON leaves out every empty repeated field."""
    body: dict[str, object] = {field: kept} if kept else {}
    token = payload.get("nextPageToken") if isinstance(payload, dict) else None
    if isinstance(token, str) and token:
        body["nextPageToken"] = token
    return json.dumps(body).encode()
