"""File Search stores, minimally: ``fileSearchStores`` create, get, list and delete.

Enough for the proxy's ownership of stores to be driven end to end by google-genai's
``file_search_stores`` and a ``generateContent`` with the File Search tool (which
``generate`` serves like any request; the store names it carries are the proxy's to
check). Imports, uploads, documents and operations are not emulated.

Shapes, from Google's REST reference for ``fileSearchStores``
(https://ai.google.dev/api/file-search/file-search-stores, read 2026-11-29) and
google-genai 3.6.1 (``types.FileSearchStore``, ``file_search_stores.py``):

- ``POST /{v}/fileSearchStores`` takes ``displayName`` (and an optional
  ``embeddingModel``) and answers the store: ``name`` (``fileSearchStores/{id}``, output
  only: an id derived from the display name with a 12-character random suffix, random
  when there is no display name), ``displayName``, ``createTime``, ``updateTime``, the
  ``activeDocumentsCount`` / ``pendingDocumentsCount`` / ``failedDocumentsCount`` and
  ``sizeBytes`` counters as int64 strings, and ``embeddingModel``.
- ``GET /{v}/fileSearchStores`` pages with ``pageSize`` / ``pageToken`` into
  ``fileSearchStores`` and ``nextPageToken`` (``{}`` when empty, as Google answers an
  empty cachedContents list).
- ``DELETE /{v}/fileSearchStores/{id}`` answers ``{}``; ``force`` is accepted (a store
  here never holds documents, so the FAILED_PRECONDITION of a non-empty store without it,
  documented on ``DeleteFileSearchStoreConfig.force``, never arises).
- A missing or deleted store is 404 ``NOT_FOUND``: not observed on the real API; the
  ``google.rpc`` convention for a get of a resource that does not exist.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from .state import emulator_state_key
from .wire import DEFAULT_TIER, ApiError, Json, get_field, json_body, json_response, page_of

_DEFAULT_PAGE_SIZE: Final = 10
# "up to 40 characters ... lowercase alphanumeric or dashes": 27 of the display name, a
# dash and the 12-character suffix.
_SLUG_LENGTH: Final = 27
DEFAULT_EMBEDDING_MODEL: Final = "models/gemini-embedding-001"


@dataclass
class EmulatedStore:
    name: str
    display_name: str
    embedding_model: str
    created: datetime
    deleted: bool = False

    def resource(self) -> Json:
        stamp = self.created.isoformat(timespec="microseconds").replace("+00:00", "Z")
        body: Json = {
            "name": self.name,
            "createTime": stamp,
            "updateTime": stamp,
            "activeDocumentsCount": "0",
            "pendingDocumentsCount": "0",
            "failedDocumentsCount": "0",
            "sizeBytes": "0",
            "embeddingModel": self.embedding_model,
        }
        if self.display_name:
            body["displayName"] = self.display_name
        return body


def _store_id(display_name: str) -> str:
    suffix = secrets.token_hex(6)
    slug = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")[:_SLUG_LENGTH]
    return f"{slug.rstrip('-')}-{suffix}" if slug else secrets.token_hex(10)


async def create_store(request: web.Request) -> web.StreamResponse:
    body = await json_body(request)
    display_name = get_field(body, "displayName") or ""
    model = get_field(body, "embeddingModel") or DEFAULT_EMBEDDING_MODEL
    if not isinstance(display_name, str) or not isinstance(model, str):
        raise ApiError(400, "Invalid value: displayName and embeddingModel are strings.")
    store = EmulatedStore(
        name=f"fileSearchStores/{_store_id(display_name)}",
        display_name=display_name,
        embedding_model=model,
        created=datetime.now(UTC),
    )
    request.app[emulator_state_key].store_file_search_store(store)
    return json_response(store.resource(), DEFAULT_TIER)


def _live(request: web.Request) -> EmulatedStore:
    name = f"fileSearchStores/{request.match_info['store_id']}"
    store = request.app[emulator_state_key].file_search_stores.get(name)
    if store is None or store.deleted:
        raise ApiError(404, f"FileSearchStore {name} not found.")
    return store


async def get_store(request: web.Request) -> web.StreamResponse:
    return json_response(_live(request).resource(), DEFAULT_TIER)


async def delete_store(request: web.Request) -> web.StreamResponse:
    _live(request).deleted = True
    return json_response({}, DEFAULT_TIER)


async def list_stores(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    alive = [store for store in state.file_search_stores.values() if not store.deleted]
    page = page_of(request, alive, _DEFAULT_PAGE_SIZE)
    body: Json = {}
    if page.items:
        body["fileSearchStores"] = [store.resource() for store in page.items]
    if page.next_token is not None:
        body["nextPageToken"] = page.next_token
    return json_response(body, DEFAULT_TIER)


def add_file_search_routes(router: web.UrlDispatcher, version: str) -> None:
    router.add_post(f"/{version}/fileSearchStores", create_store)
    router.add_get(f"/{version}/fileSearchStores", list_stores)
    one = f"/{version}/fileSearchStores/{{store_id:[^/:]+}}"
    router.add_get(one, get_store)
    router.add_delete(one, delete_store)
