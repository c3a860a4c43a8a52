"""Which Gemini endpoint a request is for, and what at the edge makes it uncheckable.

``classify`` names the route of every path under the API prefixes, so the handler
knows whether to read the body, tap the response and check who owns what the call
names. What it does not know is ``Action.UNLISTED``: in ``virtual_keys`` mode that is
refused, never forwarded (``Route.offered``, checked by ``server.admission.admit``),
since a route the proxy does not know acts on the whole organisation's project behind
the shared upstream key, unmetered and unowned; in ``passthrough`` mode, where each
client's own key goes upstream, it is relayed as it came, and a write on it (any method
but GET, HEAD and OPTIONS) is recorded like a call on ``UNMETERED_ROUTES``, as
``unlisted`` (``UNLISTED_WRITE``): it may be a model call Google bills. The free routes
the proxy knows (``Action.FORWARD``: models and tuned models, read) are relayed
unrecorded.

``UNMETERED_ROUTES`` is the one table of routes Google bills that the meter
does not understand yet (docs/metering.md lists them with what is recorded):
a call on one is relayed untouched and still recorded, with zero tokens and
``unmetered_route`` set, so totals never silently omit it.

Cached contents, files, Veo operations and File Search stores are owned resources
(``storage.schema.ResourceKind``): every method on one names it (``Route.resource``,
canonical: ``cachedContents/{id}``, ``files/{id}``, ``models/{m}/operations/{id}``) for
the owner check, a list is filtered to the caller's own (a model's operations are not
listed at all), and a method the proxy does not know on one is refused
(``RESOURCE_UNKNOWN``), never forwarded. Everything under a store (documents,
operations, media, imports) is checked as the store (``fileSearchStores/{id}``);
operations named by a bare id, under no resource, are refused (``BARE_OPERATION``).

It also holds the pure checks ``server.admission.admit`` refuses by, each of them
closing a way to make the proxy check one request while the upstream serves
another: ``path_problem`` (dot, empty or encoded segments), ``method_override``
(Google honours ``X-HTTP-Method-Override`` and ``$httpMethod``),
``masking_parameter`` (field masks and encodings that would strip usage),
``strict_json`` (duplicate keys, unparseable or too deep bodies) and
``previous_interaction_ids`` (both spellings, body and query). The caches, files and
stores a body names are read by ``server.references``, for every route alike.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, auto

from multidict import MultiMapping

from ..metering.records import EndpointKind
from ..storage.schema import ResourceKind

FORWARDED_PREFIXES = ("/v1/", "/v1beta/", "/v1alpha/", "/upload/", "/download/")
# Google serves media downloads under "/download" (a batch's responses file: the Batch
# API guide's REST example); its front end may route any method there like the plain
# path, so ``classify`` reads "/download/X" exactly as "/X": no route is reachable
# there unchecked.
_DOWNLOAD = "/download"

_VERSION = r"(?:v1|v1beta|v1alpha)"
# Google's front end serves an API's methods under "/upload" too, so an
# interaction or a generation reached that way is classified like the plain one.
_PREFIX = rf"^(?:/upload)?/{_VERSION}"
# Everything under the interactions collection, whatever follows the id: the id is
# checked against its owner before the rest of the path is even looked at.
# Matched without regard to case, like the generate routes: should the upstream route
# a path case-insensitively, the proxy must not have waved it through unchecked.
_INTERACTIONS = re.compile(rf"{_PREFIX}/interactions(?:$|(?P<rest>[/:].*))", re.IGNORECASE)
_INTERACTION_ID = re.compile(r"^/(?P<id>[^/:]+)(?P<suffix>.*)$")
_GENERATE = re.compile(
    rf"{_PREFIX}/(?:models|tunedModels)/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$",
    re.IGNORECASE,
)
_MODEL = r"(?:models|tunedModels)/(?P<model>[^/:]+)"
_EMBED = re.compile(
    rf"{_PREFIX}/{_MODEL}:(?P<method>embedContent|batchEmbedContents)$", re.IGNORECASE
)
_BATCH_CREATE = re.compile(
    rf"{_PREFIX}/{_MODEL}:(?P<method>batchGenerateContent|asyncBatchEmbedContent)$", re.IGNORECASE
)
# Everything under the batches collection, like interactions: a batch named in the
# path is checked against its owner whatever follows its id.
_BATCHES = re.compile(rf"{_PREFIX}/batches(?:$|(?P<rest>[/:].*))", re.IGNORECASE)
_BATCH_ID = re.compile(r"^/(?P<id>[^/:]+)(?P<suffix>.*)$")
_COUNT_TOKENS = re.compile(rf"{_PREFIX}/{_MODEL}:countTokens$", re.IGNORECASE)
# The collections of owned resources, under every prefix Google's front end serves them
# (files are downloaded under "/download" too): whatever follows the collection is
# classified below, so no spelling reaches one unchecked.
_CACHES = re.compile(rf"{_PREFIX}/cachedContents(?:$|(?P<rest>[/:].*))", re.IGNORECASE)
_FILES = re.compile(
    rf"^(?:/upload|/download)?/{_VERSION}/files(?:$|(?P<rest>[/:].*))", re.IGNORECASE
)
_RESOURCE_ID = re.compile(r"^/(?P<id>[^/:]+)(?P<suffix>.*)$")
# File Search stores, with everything under one (documents, operations, media, imports).
_STORES = re.compile(
    rf"^(?:/upload|/download)?/{_VERSION}/fileSearchStores(?:$|(?P<rest>[/:].*))", re.IGNORECASE
)
# Operations named by a bare id, under no resource. google-genai 3.6.1 reaches them only on
# Vertex AI (``operations.Operations._get`` raises in Gemini Developer API mode); Google's
# Developer API lists them at ``GET /v1/operations`` and deletes them there (generativelanguage
# v1 discovery document, revision 20240410, read 2026-11-29): every user's, behind the shared
# key. So every method on them is refused, never forwarded.
_BARE_OPERATIONS = re.compile(
    rf"^(?:/upload|/download)?/{_VERSION}/operations(?:$|[/:])", re.IGNORECASE
)
# Imagen and Veo. A Veo operation is named "models/{model}/operations/{id}"; every
# method on it (and the collection itself) is classified, so none slips past its owner.
_PREDICT = re.compile(rf"{_PREFIX}/{_MODEL}:(?P<method>predict|predictLongRunning)$", re.IGNORECASE)
_MODEL_OPERATIONS = re.compile(
    rf"{_PREFIX}/models/(?P<model>[^/:]+)/operations(?:$|/$|/(?P<id>[^/:]+)(?P<suffix>.*)$)",
    re.IGNORECASE,
)
# Gemini's OpenAI-compatible surface (the model is in the body). A trailing slash and the
# "/upload" prefix are read as the same route, so the spelling cannot move a call off the meter.
_OPENAI = re.compile(
    rf"{_PREFIX}/openai/(?P<method>chat/completions|embeddings|images/generations)/?$",
    re.IGNORECASE,
)
# The free routes the proxy knows (Action.FORWARD), GET only: the models and tuned models
# a key may call, listed and read one by one, and the OpenAI-compatible surface's list and
# get of models. google-genai 3.6.1 reads them so (``models.py``: ``models.list`` sends
# ``GET models``, or ``GET tunedModels`` with ``query_base=False``; ``models.get`` and
# ``tunings.py``'s ``tunings.get`` send ``GET {name}``, ``models/{m}`` or ``tunedModels/{m}``;
# @google/genai 3.3.0 the same), as does the OpenAI compatibility guide's
# ``client.models.list()`` and ``client.models.retrieve(m)``. A tuned model the
# organisation made outside the proxy is usable by every key, like a base model: reading it
# is offered, changing it (PATCH, DELETE, ``:transferOwnership``, its ``permissions``) is
# not. Case and a trailing slash are read as everywhere else in ``classify``.
_FREE = re.compile(rf"{_PREFIX}/(?:models|tunedModels|openai/models)(?:/[^/:]+)?/?$", re.IGNORECASE)


class Action(Enum):
    """What a request does, as far as metering and ownership care."""

    FORWARD = auto()  # a free route the proxy knows (``_FREE``): relayed, not recorded
    # A path under the API prefixes the proxy does not know. In virtual_keys mode it is
    # refused, never forwarded (``Route.offered``): behind the shared upstream key it would
    # act on the whole organisation's project (tuned models' permissions, corpora,
    # generated files, whatever Google adds next), unmetered and unowned. In passthrough
    # mode the client's own key goes upstream, so it is relayed as it came: a read (GET,
    # HEAD, OPTIONS) unrecorded, any other method recorded as ``unlisted`` (``UNLISTED_WRITE``),
    # since it may be a model call Google bills (``decisions``, whatever Google adds next).
    UNLISTED = auto()
    INTERACTION_CREATE = auto()
    INTERACTION_GET = auto()
    INTERACTION_CANCEL = auto()
    INTERACTION_DELETE = auto()
    # a method or sub-path on an interaction the proxy does not know: refused, never
    # forwarded, since it could act on someone else's interaction or bill unmetered
    INTERACTION_UNKNOWN = auto()
    GENERATE = auto()
    STREAM_GENERATE = auto()
    EMBED = auto()
    BATCH_EMBED = auto()
    # The Batch API: a create is free but budget-checked; its results are metered
    # where the proxy sees them (a get or list of batches, the responses file).
    BATCH_CREATE = auto()
    BATCH_EMBED_CREATE = auto()  # asyncBatchEmbedContent: embeddings through the Batch API
    BATCH_GET = auto()
    BATCH_LIST = auto()
    BATCH_CANCEL = auto()
    BATCH_DELETE = auto()
    BATCH_UPDATE = auto()
    # a method or sub-path on a batch the proxy does not know: refused, never forwarded
    BATCH_UNKNOWN = auto()
    OPENAI_CHAT = auto()  # /openai/chat/completions
    OPENAI_EMBED = auto()  # /openai/embeddings
    OPENAI_IMAGES = auto()  # /openai/images/generations: billed per image (or by the token)
    UNMETERED = auto()  # billable, not understood yet: recorded with zero tokens
    COUNT_TOKENS = auto()  # free, but its body may name a cache or a file
    CACHE_CREATE = auto()
    CACHE_GET = auto()
    CACHE_LIST = auto()
    CACHE_UPDATE = auto()
    CACHE_DELETE = auto()
    # a plain or resumable upload (every leg), files.create and files:register: the
    # files the response names become the uploader's
    FILE_UPLOAD = auto()
    FILE_GET = auto()
    FILE_LIST = auto()
    FILE_DELETE = auto()
    FILE_DOWNLOAD = auto()
    PREDICT = auto()  # Imagen: billed per image returned
    PREDICT_LONG_RUNNING = auto()  # Veo: starts an operation, billed when it is done
    OPERATION_GET = auto()  # a Veo operation's poll: its creator's only; bills it once done
    OPERATION_OTHER = auto()  # cancelling or deleting a Veo operation: its creator's only
    # a method on a cache, a file or a Veo operation the proxy does not know, or a listing
    # of a model's operations (every user's, behind the shared key): refused, never forwarded
    RESOURCE_UNKNOWN = auto()
    STORE_CREATE = auto()  # the new File Search store becomes its creator's
    STORE_LIST = auto()  # filtered to the caller's own stores
    # any other known method on a store or under it (get, delete, its documents,
    # operations and media): the store's owner's only
    STORE_METHOD = auto()
    # importFile and uploadToFileSearchStore: the store's owner's only, and recorded
    # unmetered (indexing bills embeddings the response does not report)
    STORE_IMPORT = auto()
    STORE_UPLOAD = auto()
    BARE_OPERATION = auto()  # /{version}/operations...: refused 404, never forwarded


# The OpenAI-compatible methods ``_OPENAI`` matches (lower-cased).
_OPENAI_ACTIONS = {
    "chat/completions": Action.OPENAI_CHAT,
    "embeddings": Action.OPENAI_EMBED,
    "images/generations": Action.OPENAI_IMAGES,
}


@dataclass(frozen=True, slots=True)
class Route:
    """What a request's method and path are to the meter. ``classify`` keeps its answers
    per path, so what follows from the action is worked out once, here, not at each of
    the dozen times a call asks (each of those was a property and an ``Action`` hashed
    in Python)."""

    action: Action
    interaction_id: str | None = None
    model: str | None = None
    # Action.UNMETERED (and a File Search import or upload): the row of UNMETERED_ROUTES
    # it is recorded by; an unlisted write: UNLISTED_WRITE
    unmetered: UnmeteredRoute | None = None
    # the owned resource the path names (a batch's, a cache's, a file's, a Veo operation's
    # or a File Search store's methods), canonical ("batches/x", "cachedContents/x",
    # "files/x", "models/m/operations/x", "fileSearchStores/x" for anything under the store)
    resource: str | None = None
    # Whether ``virtual_keys`` mode forwards the route, on the shared upstream key. Every
    # route the proxy knows is, but for the rows of ``UNMETERED_ROUTES`` marked otherwise
    # (``UnmeteredRoute.offered``); an unlisted one is not. In passthrough mode this does
    # not apply: the client's own key answers for what it reaches.
    offered: bool = field(init=False, compare=False)
    resource_kind: ResourceKind | None = field(init=False, compare=False)
    # the kind of owned resource a list method answers (filtered to the caller's)
    lists: ResourceKind | None = field(init=False, compare=False)
    # The response names owned resources: the proxy reads it whole before relaying it (to
    # own what it creates, bill a cache's storage, or filter a list).
    owns_response: bool = field(init=False, compare=False)
    endpoint: EndpointKind | None = field(init=False, compare=False)
    metered: bool = field(init=False, compare=False)
    # The proxy reads the response (so asks the upstream for encodings it can undo); a
    # download too, which may be a batch's responses file, metered line by line.
    reads_response: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        action, unmetered = self.action, self.unmetered
        endpoint = _ENDPOINTS.get(action)
        owns_response = action in _OWNED_RESPONSES
        put = object.__setattr__  # (frozen)
        put(
            self,
            "offered",
            action is not Action.UNLISTED and (unmetered is None or unmetered.offered),
        )
        put(self, "resource_kind", _RESOURCE_KINDS.get(action))
        put(self, "lists", _LISTS.get(action))
        put(self, "owns_response", owns_response)
        put(self, "endpoint", endpoint)
        put(self, "metered", endpoint is not None)
        reads = endpoint is not None or owns_response or action is Action.FILE_DOWNLOAD
        put(self, "reads_response", reads)


_ENDPOINTS = {
    Action.INTERACTION_CREATE: EndpointKind.INTERACTION_CREATE,
    Action.INTERACTION_GET: EndpointKind.INTERACTION_GET,
    Action.GENERATE: EndpointKind.GENERATE_CONTENT,
    Action.STREAM_GENERATE: EndpointKind.STREAM_GENERATE_CONTENT,
    Action.EMBED: EndpointKind.EMBED_CONTENT,
    Action.BATCH_EMBED: EndpointKind.BATCH_EMBED_CONTENTS,
    # Metered for the results they may carry: one record per result, none for the call.
    Action.BATCH_GET: EndpointKind.BATCH_RESULT,
    Action.BATCH_LIST: EndpointKind.BATCH_RESULT,
    # storage: charged at create, adjusted on a TTL change and refunded on delete
    Action.CACHE_CREATE: EndpointKind.CACHED_CONTENT_CREATE,
    Action.CACHE_UPDATE: EndpointKind.CACHED_CONTENT_UPDATE,
    Action.CACHE_DELETE: EndpointKind.CACHED_CONTENT_DELETE,
    Action.OPENAI_CHAT: EndpointKind.OPENAI_CHAT_COMPLETIONS,
    Action.OPENAI_EMBED: EndpointKind.OPENAI_EMBEDDINGS,
    Action.OPENAI_IMAGES: EndpointKind.OPENAI_IMAGES,
    Action.PREDICT: EndpointKind.PREDICT,
    Action.PREDICT_LONG_RUNNING: EndpointKind.PREDICT_LONG_RUNNING,
    # the poll that first sees a video operation done carries its bill
    Action.OPERATION_GET: EndpointKind.PREDICT_LONG_RUNNING,
}
_RESOURCE_KINDS = {
    Action.CACHE_GET: ResourceKind.CACHED_CONTENT,
    Action.CACHE_UPDATE: ResourceKind.CACHED_CONTENT,
    Action.CACHE_DELETE: ResourceKind.CACHED_CONTENT,
    Action.FILE_GET: ResourceKind.FILE,
    Action.FILE_DELETE: ResourceKind.FILE,
    Action.FILE_DOWNLOAD: ResourceKind.FILE,
    Action.OPERATION_GET: ResourceKind.OPERATION,
    Action.OPERATION_OTHER: ResourceKind.OPERATION,
    Action.STORE_METHOD: ResourceKind.FILE_SEARCH_STORE,
    Action.STORE_IMPORT: ResourceKind.FILE_SEARCH_STORE,
    Action.STORE_UPLOAD: ResourceKind.FILE_SEARCH_STORE,
}
_LISTS = {
    Action.CACHE_LIST: ResourceKind.CACHED_CONTENT,
    Action.FILE_LIST: ResourceKind.FILE,
    Action.STORE_LIST: ResourceKind.FILE_SEARCH_STORE,
}
_OWNED_RESPONSES = frozenset(
    {
        Action.CACHE_CREATE,
        Action.CACHE_UPDATE,
        Action.CACHE_DELETE,
        Action.CACHE_LIST,
        Action.FILE_UPLOAD,
        Action.FILE_LIST,
        Action.STORE_CREATE,
        Action.STORE_LIST,
    }
)

FORWARD = Route(Action.FORWARD)
UNLISTED = Route(Action.UNLISTED)
_UNKNOWN = Route(Action.INTERACTION_UNKNOWN)
_UNKNOWN_RESOURCE = Route(Action.RESOURCE_UNKNOWN)

# (method, what follows the collection) -> action, and (method, what follows the id)
_ON_CACHES = {("POST", ""): Action.CACHE_CREATE, ("GET", ""): Action.CACHE_LIST}
_ON_CACHE = {
    ("GET", ""): Action.CACHE_GET,
    ("PATCH", ""): Action.CACHE_UPDATE,
    ("DELETE", ""): Action.CACHE_DELETE,
}
_ON_FILES = {
    ("POST", ""): Action.FILE_UPLOAD,
    ("GET", ""): Action.FILE_LIST,
    ("POST", ":register"): Action.FILE_UPLOAD,
}
_ON_FILE = {
    ("GET", ""): Action.FILE_GET,
    ("DELETE", ""): Action.FILE_DELETE,
    ("GET", ":download"): Action.FILE_DOWNLOAD,
}

_ON_STORES = {("POST", ""): Action.STORE_CREATE, ("GET", ""): Action.STORE_LIST}
# (method, what follows a store's id, lower-cased, without a trailing slash) -> action, per
# Google's REST reference for fileSearchStores, fileSearchStores.documents,
# fileSearchStores.operations and fileSearchStores.upload.operations
# (https://ai.google.dev/api/file-search/file-search-stores and .../documents, read
# 2026-11-29) and google-genai 3.6.1 (``file_search_stores.py``: ``download_media`` reads
# ``fileSearchStores/{s}/media/{id}?alt=media``). Anything else on a store is refused.
_ON_STORE: tuple[tuple[str, re.Pattern[str], Action], ...] = tuple(
    (method, re.compile(suffix), action)
    for method, suffix, action in (
        ("GET", r"", Action.STORE_METHOD),
        ("DELETE", r"", Action.STORE_METHOD),
        ("POST", r":importfile", Action.STORE_IMPORT),
        ("POST", r":uploadtofilesearchstore", Action.STORE_UPLOAD),
        ("GET", r"/documents", Action.STORE_METHOD),
        ("GET", r"/documents/[^/:]+", Action.STORE_METHOD),
        ("DELETE", r"/documents/[^/:]+", Action.STORE_METHOD),
        ("GET", r"/operations/[^/:]+", Action.STORE_METHOD),
        ("GET", r"/upload/operations/[^/:]+", Action.STORE_METHOD),
        ("GET", r"/media/[^/:]+", Action.STORE_METHOD),
    )
)

# (method, what follows the id) -> action; anything else on an interaction is unknown.
_ON_INTERACTION = {
    ("GET", ""): Action.INTERACTION_GET,
    ("GET", "/"): Action.INTERACTION_GET,
    ("DELETE", ""): Action.INTERACTION_DELETE,
    ("DELETE", "/"): Action.INTERACTION_DELETE,
    ("POST", "/cancel"): Action.INTERACTION_CANCEL,
    ("POST", ":cancel"): Action.INTERACTION_CANCEL,
}


# (method, what follows the batch id) -> action; anything else on a batch is unknown.
# Google's methods (REST reference of ``batches``): get, delete, ``:cancel``,
# ``:updateGenerateContentBatch`` and ``:updateEmbedContentBatch`` (PATCH); "/cancel" is
# checked like ":cancel" rather than refused, as for interactions.
_ON_BATCH = {
    ("GET", ""): Action.BATCH_GET,
    ("GET", "/"): Action.BATCH_GET,
    ("DELETE", ""): Action.BATCH_DELETE,
    ("DELETE", "/"): Action.BATCH_DELETE,
    ("POST", ":cancel"): Action.BATCH_CANCEL,
    ("POST", "/cancel"): Action.BATCH_CANCEL,
    ("PATCH", ":updategeneratecontentbatch"): Action.BATCH_UPDATE,
    ("PATCH", ":updateembedcontentbatch"): Action.BATCH_UPDATE,
}
_BATCH_UNKNOWN = Route(Action.BATCH_UNKNOWN)


@dataclass(frozen=True, slots=True)
class UnmeteredRoute:
    """A billable route the meter cannot read usage from yet: a row of
    ``UNMETERED_ROUTES``, or ``UNLISTED_WRITE``.

    ``kind`` is stored as the record's endpoint and is the metric's ``route``
    label, so label values are bounded by this table (and ``unlisted``). A ``model``
    group of the pattern, if any, names the record's model; the body is never read.
    """

    kind: EndpointKind
    method: str
    pattern: re.Pattern[str]
    # False: recorded in passthrough mode, refused in virtual_keys mode (``Route.offered``)
    offered: bool = True


def _unmetered(
    kind: EndpointKind, method: str, pattern: str, *, offered: bool = True
) -> UnmeteredRoute:
    return UnmeteredRoute(kind, method, re.compile(pattern, re.IGNORECASE), offered)


_V = rf"^/{_VERSION}"
_ID = r"[^/:]+"
# The OpenAI-compatible calls offered unmetered with virtual keys (see the table's last rows).
_OPENAI_STATELESS = (
    r"(?:completions|moderations|audio/(?:speech|transcriptions|translations)"
    r"|images/(?:edits|variations))"
)
FILE_SEARCH_IMPORT = _unmetered(
    EndpointKind.FILE_SEARCH_IMPORT, "POST", rf"{_V}/fileSearchStores/{_ID}:importFile/?$"
)
FILE_SEARCH_UPLOAD = _unmetered(
    EndpointKind.FILE_SEARCH_IMPORT,
    "POST",
    rf"^(?:/upload)?/{_VERSION}/fileSearchStores/{_ID}:uploadToFileSearchStore/?$",
)
# First match wins. Free routes (countTokens, models) are not here: they cost nothing;
# nor are cachedContents and files, metered and owned above, nor the Batch API, whose
# results are metered (``Action.BATCH_*``). docs/metering.md lists every route with what
# the meter records for it; keep the two in step.
UNMETERED_ROUTES: tuple[UnmeteredRoute, ...] = (
    # Polls of other long-running work; Veo's operations under models/ are metered and
    # owned, a File Search store's are its owner's, bare ones refused (see classify).
    # A tuned model's (its tuning) is offered like the tuned model itself, which every key
    # may read; no key can start one here (creating a tuned model is unlisted), so it is
    # the organisation's. Any other (generatedFiles/{f}/operations/{id}, corpora, a
    # collection Google adds) names a resource the proxy does not know, every user's
    # behind the shared key: recorded in passthrough mode, refused with virtual keys.
    _unmetered(EndpointKind.OPERATION_GET, "GET", rf"{_V}/tunedModels/{_ID}/operations/{_ID}$"),
    _unmetered(
        EndpointKind.OPERATION_GET, "GET", rf"{_V}/(?:[^:]+/)?operations/{_ID}$", offered=False
    ),
    # File Search indexing bills the embeddings it computes (classified with the store's
    # other methods, which check its owner first: see _classify_store).
    FILE_SEARCH_IMPORT,
    FILE_SEARCH_UPLOAD,
    # Free itself, but the token opens a Live API session at Google directly, past this
    # proxy: in virtual_keys mode only server.live mints (a handle in place of the token,
    # at the canonical path) and every other spelling is refused; in passthrough mode the
    # client's own key pays and the record says who minted it.
    # (A trailing slash too: it must not fall through to a free route that is forwarded.)
    _unmetered(EndpointKind.AUTH_TOKEN_CREATE, "POST", rf"{_V}/auth_tokens/?$"),
    # OpenAI-compatible batches: not offered with virtual keys, in any method (their reads
    # are unlisted already). The openai SDK's flow, as Google's OpenAI compatibility guide
    # gives it, uploads the input with files.create (``POST openai/files``, refused with
    # virtual keys: a file made there would be nobody's), names it in batches.create by
    # ``input_file_id``, polls batches.retrieve and reads the results with files.content
    # (``GET openai/batches/{id}``, ``GET openai/files/{id}/content``: unlisted). Behind the
    # shared key a create could name any user's file by its id, checked against no owner,
    # and its batch would be the whole organisation's (``/{id}/cancel`` cancels anyone's),
    # with results that could not be read back through the proxy anyway. Owning them instead
    # (the input file at create, then the batch's get, list, cancel and results) would need
    # OpenAI-shaped files and batches owned and metered like Gemini's; Gemini's own Batch API
    # (``Action.BATCH_*``) offers the same work, owned and metered. In passthrough mode a
    # create or cancel is recorded, as the client's own key pays for it.
    # (Under "/upload" too, like the metered OpenAI routes: every spelling is one route.)
    _unmetered(
        EndpointKind.OPENAI_OTHER,
        "POST",
        rf"{_PREFIX}/openai/batches(?:[/:].*)?$",
        offered=False,
    ),
    # The OpenAI-compatible surface's other calls (chat completions, embeddings and image
    # generation are metered; files are unlisted). With virtual keys only the model calls
    # that make and name nothing stored are offered: the openai SDK 3.57.0's
    # completions.create, moderations.create, audio.speech.create,
    # audio.transcriptions.create, audio.translations.create, images.edit and
    # images.create_variation. Anything else that SDK POSTs there makes or names objects
    # that behind the shared key would be the whole organisation's and owned by nobody here
    # (stored responses, continued by ``previous_response_id``; stored chat completions,
    # ``chat/completions/{id}``; uploads, vector stores, assistants and threads, fine-tuning
    # jobs, conversations, containers, evals, videos, webhook endpoints, the organisation's
    # own administration), or mints a Realtime client secret that would open a session at
    # Google past the meter, as ``auth_tokens`` would: so it, and whatever Google adds
    # there next, is recorded in passthrough mode and refused with virtual keys, like a
    # route the proxy does not know. Under "/upload" too: every spelling is one route.
    _unmetered(EndpointKind.OPENAI_OTHER, "POST", rf"{_PREFIX}/openai/{_OPENAI_STATELESS}/?$"),
    _unmetered(
        EndpointKind.OPENAI_OTHER,
        "POST",
        rf"{_PREFIX}/openai/(?!files(?:[/:]|$)).+$",
        offered=False,
    ),
)


# Passthrough mode: a call on a route the proxy does not know with any method but these is
# recorded as if it were a row of the table above. Google bills model calls the proxy may
# not know yet (google-genai 3.6.1's ``client.decisions``: ``POST /{v}/decisions``, in
# ``_gaos/decisions.py``; whatever Google adds next), and a metering proxy must not let one
# through unseen; a read is not one. With virtual keys it is refused like every unlisted
# call (``Route.offered``). Not a row of the table: ``classify`` gives it to whatever no
# pattern claims, so its method and pattern are never matched. One kind for every path:
# the path itself is never a metric label.
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
UNLISTED_WRITE = UnmeteredRoute(EndpointKind.UNLISTED, "*", re.compile(""), offered=False)
_UNLISTED_WRITE = Route(Action.UNLISTED, unmetered=UNLISTED_WRITE)


def _unlisted(method: str) -> Route:
    return UNLISTED if method in _READS else _UNLISTED_WRITE


def _classify_unmetered(method: str, path: str) -> Route | None:
    for row in UNMETERED_ROUTES:
        if row.method != method:
            continue
        m = row.pattern.match(path)
        if m is not None:
            model = m.groupdict().get("model")
            return Route(Action.UNMETERED, model=model, unmetered=row)
    return None


# ``classify`` and ``path_problem`` are pure functions of a request's method and path, asked
# on every call: their answers are kept for the paths seen most recently, up to a number
# and a length (the Gemini API's paths are short), so that whatever paths clients send the
# kept ones hold at most a few MB.
_PATHS_KEPT = 4096
_KEPT_PATH_LENGTH = 256


def classify(method: str, path: str) -> Route:
    """The route of a request whose path is under the API prefixes (``is_forwarded``).

    ``path`` must be the request's decoded path (aiohttp's ``request.path``), once
    ``path_problem`` found its raw form canonical (no dot or empty segments, no encoded
    separator); ``method`` the request's own (``method_override`` is refused). What no
    pattern here claims is ``UNLISTED``, carrying ``UNLISTED_WRITE`` unless it only reads.
    """
    if len(path) <= _KEPT_PATH_LENGTH:
        return _classify_kept(method, path)
    return _classify(method, path)


def _classify(method: str, path: str) -> Route:
    if path.startswith(_DOWNLOAD + "/"):
        path = path[len(_DOWNLOAD) :]
    m = _INTERACTIONS.match(path)
    if m is not None:
        rest = m.group("rest") or ""
        if rest in ("", "/"):
            # Creating is the one thing the collection is for; a listing would show
            # every user's interactions behind the shared upstream key.
            return Route(Action.INTERACTION_CREATE) if method == "POST" else _UNKNOWN
        i = _INTERACTION_ID.match(rest)
        if i is None:
            return _UNKNOWN
        iid = i.group("id")
        if iid.lower() == "live":
            # Live Interactions: a WebSocket at "interactions/live" (google-genai 3.6.1,
            # ``_interactions_websocket._LIVE_INTERACTIONS_PATH``, experimental), not an
            # interaction's id. The proxy does not relay or meter it yet: not offered.
            return _unlisted(method)
        return Route(
            _ON_INTERACTION.get((method, i.group("suffix").lower()), Action.INTERACTION_UNKNOWN),
            iid,
        )
    if method == "POST" and "content" in path.lower():
        g = _GENERATE.match(path)
        if g is not None:
            action = (
                Action.GENERATE
                if g.group("method").lower() == "generatecontent"
                else Action.STREAM_GENERATE
            )
            return Route(action, model=g.group("model"))
    if method == "POST" and "mbedcontent" in path.lower():
        e = _EMBED.match(path)
        if e is not None:
            embed = e.group("method").lower() == "embedcontent"
            return Route(Action.EMBED if embed else Action.BATCH_EMBED, model=e.group("model"))
    if method == "POST" and "counttokens" in path.lower():
        c = _COUNT_TOKENS.match(path)
        if c is not None:
            return Route(Action.COUNT_TOKENS, model=c.group("model"))
    owned = _classify_owned(method, path) or _classify_store(method, path)
    if owned is not None:
        return owned
    if _BARE_OPERATIONS.match(path):
        return Route(Action.BARE_OPERATION)
    if method == "POST" and "openai" in path.lower():
        o = _OPENAI.match(path)
        if o is not None:
            return Route(_OPENAI_ACTIONS[o.group("method").lower()])
    return (
        _classify_media(method, path)
        or _classify_batches(method, path)
        or _classify_unmetered(method, path)
        or (FORWARD if method == "GET" and _FREE.match(path) else _unlisted(method))
    )


# (method, what follows the id) -> action on a Veo operation; anything else is refused.
_ON_OPERATION = {
    ("GET", ""): Action.OPERATION_GET,
    ("GET", "/"): Action.OPERATION_GET,
    ("DELETE", ""): Action.OPERATION_OTHER,
    ("DELETE", "/"): Action.OPERATION_OTHER,
    ("POST", ":cancel"): Action.OPERATION_OTHER,
}


def _classify_media(method: str, path: str) -> Route | None:
    """Imagen, Veo and Veo's operations; None for anything else."""
    lowered = path.lower()
    if method == "POST" and ":predict" in lowered:
        p = _PREDICT.match(path)
        if p is not None:
            long_running = p.group("method").lower() == "predictlongrunning"
            action = Action.PREDICT_LONG_RUNNING if long_running else Action.PREDICT
            return Route(action, model=p.group("model"))
    if "/operations" in lowered:
        o = _MODEL_OPERATIONS.match(path)
        if o is not None:
            model = o.group("model")
            if o.group("id") is None:
                return Route(Action.RESOURCE_UNKNOWN, model=model)
            action = _ON_OPERATION.get((method, o.group("suffix").lower()), Action.RESOURCE_UNKNOWN)
            # The canonical name Google gives the operation; another spelling of the
            # collections' names still names the same operation.
            name = f"models/{model}/operations/{o.group('id')}"
            return Route(action, model=model, resource=name)
    return None


def _classify_batches(method: str, path: str) -> Route | None:
    """The Batch API's routes (a responses file's download is a file's: ``_ON_FILE``)."""
    if "batch" in path.lower():
        if method == "POST" and (c := _BATCH_CREATE.match(path)) is not None:
            embed = c.group("method").lower() == "asyncbatchembedcontent"
            action = Action.BATCH_EMBED_CREATE if embed else Action.BATCH_CREATE
            return Route(action, model=c.group("model"))
        b = _BATCHES.match(path)
        if b is not None:
            rest = b.group("rest") or ""
            if rest in ("", "/"):
                # Listing is all the collection is for (batches are created on a model).
                return Route(Action.BATCH_LIST) if method == "GET" else _BATCH_UNKNOWN
            i = _BATCH_ID.match(rest)
            if i is None:
                return _BATCH_UNKNOWN
            action = _ON_BATCH.get((method, i.group("suffix").lower()), Action.BATCH_UNKNOWN)
            return Route(action, resource=f"batches/{i.group('id')}")
    return None


def _classify_owned(method: str, path: str) -> Route | None:
    """A method on the cachedContents or files collection, or on one of their items."""
    for pattern, prefix, on_collection, on_item in (
        (_CACHES, "cachedContents", _ON_CACHES, _ON_CACHE),
        (_FILES, "files", _ON_FILES, _ON_FILE),
    ):
        m = pattern.match(path)
        if m is None:
            continue
        rest = m.group("rest") or ""
        if rest in ("", "/") or rest.startswith(":"):
            action = on_collection.get((method, rest.rstrip("/").lower()))
            return Route(action) if action is not None else _UNKNOWN_RESOURCE
        i = _RESOURCE_ID.match(rest)
        if i is None:
            return _UNKNOWN_RESOURCE
        suffix = i.group("suffix").lower()
        action = on_item.get((method, "" if suffix == "/" else suffix))
        if action is None:
            return _UNKNOWN_RESOURCE
        return Route(action, resource=f"{prefix}/{i.group('id')}")
    return None


_STORE_ROWS = {Action.STORE_IMPORT: FILE_SEARCH_IMPORT, Action.STORE_UPLOAD: FILE_SEARCH_UPLOAD}


def _classify_store(method: str, path: str) -> Route | None:
    """A method on the fileSearchStores collection or on (or under) one store.

    Everything under a store is its owner's, so every route names the store itself
    (``fileSearchStores/{id}``) for the owner check, whatever sub-resource it reaches.
    """
    m = _STORES.match(path)
    if m is None:
        return None
    rest = m.group("rest") or ""
    if rest in ("", "/") or rest.startswith(":"):
        action = _ON_STORES.get((method, rest.rstrip("/").lower()))
        return Route(action) if action is not None else _UNKNOWN_RESOURCE
    i = _RESOURCE_ID.match(rest)
    if i is None:
        return _UNKNOWN_RESOURCE
    suffix = i.group("suffix").lower()
    if suffix.endswith("/"):
        suffix = suffix[:-1]
    for row_method, pattern, row_action in _ON_STORE:
        if row_method == method and pattern.fullmatch(suffix):
            name = f"fileSearchStores/{i.group('id')}"
            return Route(row_action, unmetered=_STORE_ROWS.get(row_action), resource=name)
    return _UNKNOWN_RESOURCE


# --- the edge: one canonical path, one effective method ------------------------------

# Percent-escapes of "/", backslash, "." and "%" itself: the upstream may or may not decode
# them before routing, so the proxy could check one path and Google serve another.
_AMBIGUOUS_ESCAPE = re.compile(r"%(?:2[fFeE]|5[cC]|25)")
# Every spelling of "use this method instead" that Google's front end or a common
# framework honours: Google documents ``X-HTTP-Method-Override`` and ``$httpMethod``.
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
METHOD_OVERRIDE_PARAMS = ("$httpmethod", "httpmethod")


def path_problem(raw_path: str) -> str | None:
    """Why the raw request target's path is ambiguous, or None when it is canonical.

    The proxy refuses rather than normalises: a path with dot segments, empty
    segments, backslashes or encoded separators may be routed by the upstream
    differently from how the proxy read it, and no SDK sends one. A single
    trailing slash is allowed (``classify`` reads it the same either way).
    """
    path = raw_path.partition("?")[0]
    if len(path) <= _KEPT_PATH_LENGTH:
        return _path_problem_kept(path)
    return _path_problem(path)


def _path_problem(path: str) -> str | None:
    if _AMBIGUOUS_ESCAPE.search(path):
        return "an encoded '/', '\\', '.' or '%'"
    if "\\" in path:
        return "a backslash"
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments = segments[:-1]
    if any(s in ("", ".", "..") for s in segments):
        return "an empty, '.' or '..' segment"
    return None


_classify_kept = functools.lru_cache(maxsize=_PATHS_KEPT)(_classify)
_path_problem_kept = functools.lru_cache(maxsize=_PATHS_KEPT)(_path_problem)


def method_override(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The override a request asks for, header or query parameter, or None."""
    for name in METHOD_OVERRIDE_HEADERS:
        if name in headers:
            return headers[name]
    for name, value in query.items():
        if name.lower() in METHOD_OVERRIDE_PARAMS:
            return value
    return None


# System parameters (Google's "System parameters" page) that change what a response
# carries or how the request body is read: on a metered route they could strip the
# usage the meter bills by, or make the upstream read a body other than the one
# checked. Query names are matched case-sensitively, as Google does, but with and
# without the "$" prefix.
_MASKING_PARAMS = ("fields", "callback", "ct")
_MASKING_HEADERS = ("x-goog-fieldmask",)
_JSON_ALTS = ("json", "sse")


def masking_parameter(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The first parameter that could hide a metered response's usage, or None."""
    for name in _MASKING_HEADERS:
        if name in headers:
            return f"the {name} header"
    for name, value in query.items():
        bare = name.removeprefix("$")
        if bare in _MASKING_PARAMS:
            return f"the {name!r} parameter"
        if bare == "alt" and value.lower() not in _JSON_ALTS:
            return f"{name}={value!r}"
    return None


def is_forwarded(path: str) -> bool:
    return path.startswith(FORWARDED_PREFIXES)


_LABELS_LIMIT = 64
_LABEL_LENGTH_LIMIT = 63


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the meter reads from a metered request's JSON body (never required)."""

    model: str | None = None
    stream: bool = False
    background: bool = False
    service_tier: str | None = None
    previous_interaction_id: str | None = None
    labels: dict[str, str] | None = None


EMPTY_META = RequestMeta()


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# Google's JSON parsing accepts a proto field by its snake_case and its camelCase name.
PREVIOUS_INTERACTION_NAMES = ("previous_interaction_id", "previousInteractionId")
# Deeper than any real request; json.loads itself gives up near 1,000 on the C stack.
_MAX_DEPTH = 100
# What a JSON value nests in (read by ``references`` too).
JSON_CONTAINERS = (dict, list)


class BodyRefused(ValueError):
    """A metered request body the proxy will not forward: it could not check it."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Which of the two values Google's parser keeps is not ours to guess.
        raise BodyRefused("the request body names a JSON key twice in one object")
    return obj


# One decoder for every body: ``json.loads`` with a hook builds one (and its scanner) per call.
_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_text(body: bytes | str) -> str:
    """``body`` as ``json.loads`` would read it: bytes in the encoding it detects (UTF-8,
    -16 or -32), a text with a byte order mark refused."""
    if isinstance(body, str):
        if body.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", body, 0)
        return body
    return body.decode(json.detect_encoding(body), "surrogatepass")


def _depth(value: object) -> int:
    """How deep ``value`` nests (a scalar 0, ``{}`` and ``[]`` 1), counted no further
    than one past ``_MAX_DEPTH``: a level at a time, keeping only the containers."""
    depth = 0
    level = [value] if isinstance(value, JSON_CONTAINERS) else []
    while level and depth <= _MAX_DEPTH:
        depth += 1
        below: list[dict[str, object] | list[object]] = []
        for item in level:
            # A loop, not a comprehension per item: half the time on small and large bodies.
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, JSON_CONTAINERS):
                    below.append(child)
        level = below
    return depth


def strict_json(body: bytes | str) -> object:
    """A metered request body (or a Live text frame) as JSON, or ``BodyRefused`` saying
    why it cannot be checked.

    Stricter than the upstream on purpose: a body the proxy reads one way and
    Google another (a duplicate key, a parse the proxy gives up on) could name
    someone else's interaction unseen, so it is refused, not forwarded.
    """
    if not body.strip():
        return None
    try:
        value: object = _STRICT.decode(_json_text(body))
    except BodyRefused:
        raise
    except RecursionError as exc:
        raise BodyRefused("the request body nests too deeply") from exc
    except ValueError as exc:
        raise BodyRefused("the request body is not valid JSON") from exc
    if _depth(value) > _MAX_DEPTH:
        raise BodyRefused("the request body nests too deeply")
    return value


def previous_interaction_ids(body: object, query: MultiMapping[str]) -> set[str]:
    """Every interaction a request continues from, in every spelling and place.

    ``BodyRefused`` when one is there but not a non-empty string: the proxy
    cannot check what it cannot read.
    """
    found: set[str] = set()
    values: list[object] = []
    if isinstance(body, dict):
        values.extend(body[name] for name in PREVIOUS_INTERACTION_NAMES if name in body)
    for name in PREVIOUS_INTERACTION_NAMES:
        values.extend(query.getall(name, []))
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise BodyRefused("previous_interaction_id must be a non-empty string")
        found.add(value)
    return found


def request_meta(route: Route, body: object) -> RequestMeta:
    """Model, streaming, tier, labels and the previous interaction from a parsed body.

    Anything of the wrong type is ignored rather than refused: the upstream is
    the judge of a request's validity, the meter only reads what it can.
    """
    if not isinstance(body, dict):
        return RequestMeta(model=route.model, stream=route.action is Action.STREAM_GENERATE)
    if route.action in (Action.OPENAI_CHAT, Action.OPENAI_EMBED):
        # OpenAI's shape: the model in the body, ``stream`` a bool, no labels; its
        # ``service_tier`` names OpenAI's tiers, not Gemini's, so it is not read.
        return RequestMeta(model=body_model(body), stream=body.get("stream") is True)
    if route.action is Action.OPENAI_IMAGES:
        # Google's guide: parameters other than prompt, model, n, size and
        # response_format are "silently ignored", ``stream`` among them: whether the
        # answer streamed is the response's to say.
        return RequestMeta(model=body_model(body))
    if route.action is Action.INTERACTION_CREATE:
        model = _str_or_none(body.get("model"))
        if model is None and (agent := _str_or_none(body.get("agent"))) is not None:
            model = f"agent:{agent}"
        tier = _str_or_none(body.get("service_tier"))
        stream = body.get("stream") is True
    else:
        model = route.model
        tier = _str_or_none(body.get("serviceTier") or body.get("service_tier"))
        stream = route.action is Action.STREAM_GENERATE
    previous = None
    for name in PREVIOUS_INTERACTION_NAMES:
        if (previous := _str_or_none(body.get(name))) is not None:
            break
    return RequestMeta(
        model=model,
        stream=stream,
        background=body.get("background") is True,
        service_tier=tier.lower() if tier else None,
        previous_interaction_id=previous,
        labels=_labels(body.get("labels")),
    )


def body_model(body: object) -> str | None:
    """The model a JSON body names (``models/`` prefix dropped), for unmetered routes."""
    if not isinstance(body, dict):
        return None
    model = _str_or_none(body.get("model"))
    if model is not None and model.startswith("models/"):
        model = model.removeprefix("models/") or None
    return model


def _labels(value: object) -> dict[str, str] | None:
    """The request's string labels, bounded as Gemini bounds them."""
    if not isinstance(value, dict):
        return None
    labels = {
        k: v
        for k, v in value.items()
        if isinstance(k, str)
        and isinstance(v, str)
        and len(k) <= _LABEL_LENGTH_LIMIT
        and len(v) <= _LABEL_LENGTH_LIMIT
    }
    if len(labels) > _LABELS_LIMIT:
        labels = dict(sorted(labels.items())[:_LABELS_LIMIT])
    return labels or None
