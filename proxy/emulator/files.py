"""The Files API: uploads (``POST /upload/{v}/files``), get, list, delete, download.

The body is streamed in and counted. A plain upload answers ``{"file": {...}}``
at once; the SDK's resumable protocol (``x-goog-upload-command: start`` then
``upload, finalize`` to the returned ``x-goog-upload-url``) works too, the
upload URL acting as the credential the way Google's does.

Every file is kept (``EmulatorState.files``; an upload's bytes too, in ``file_data``, up
to ``MAX_KEPT_FILE_BYTES``, for a batch to read its input file from):
``GET /{v}/files/{id}`` answers the File itself (no ``file`` wrapper), ``GET /{v}/files``
pages them as ``{"files": [...], "nextPageToken"}`` (``{}`` when there are none), ``DELETE``
answers ``{}``, and ``GET /{v}/files/{id}:download?alt=media`` answers a generated
file's bytes. An uploaded file cannot be downloaded (the SDK's ``files.download``
says "Only generated files can be downloaded"); other emulated endpoints may store a
generated one with ``data``, and a batch's responses file (``batches``) is served by that
module as it is written. A missing file is 403, as
Google answers it (google-gemini/deprecated-generative-ai-python issue 617, read
2026-11-29: "403 You do not have permission to access the File ..."). Shapes: the
fields of ``google.genai.types.File`` and ``ListFilesResponse`` (SDK 3.6.1).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from aiohttp import web

from .state import MAX_KEPT_FILE_BYTES, MAX_UPLOAD_SESSIONS, emulator_state_key
from .wire import (
    DEFAULT_TIER,
    TIER_HEADER,
    ApiError,
    Json,
    get_field,
    json_body,
    json_response,
    page_of,
    timestamp,
)

_DEFAULT_PAGE_SIZE: Final = 10  # Google's default for files.list


@dataclass
class UploadSession:
    mime_type: str
    display_name: str | None
    received: int = 0
    data: bytearray = field(default_factory=bytearray)


@dataclass
class EmulatedFile:
    """A stored file: its resource as served, and a generated file's bytes."""

    name: str  # "files/..."
    resource: Json
    data: bytes | None = None  # only a generated file can be downloaded


def missing_file(file_id: str) -> ApiError:
    return ApiError(
        403, f"You do not have permission to access the File {file_id} or it may not exist."
    )


def _file_resource(request: web.Request, size: int, mime_type: str, name: str | None) -> Json:
    file_id = secrets.token_hex(6)
    now = datetime.now(UTC)
    version = request.match_info["version"]
    body: Json = {
        "name": f"files/{file_id}",
        "mimeType": mime_type,
        "sizeBytes": str(size),
        "createTime": timestamp(now),
        "updateTime": timestamp(now),
        "expirationTime": timestamp(now + timedelta(hours=48)),
        "uri": f"{request.scheme}://{request.host}/{version}/files/{file_id}",
        "state": "ACTIVE",
        "source": "UPLOADED",
    }
    if name:
        body["displayName"] = name
    request.app[emulator_state_key].store_file(EmulatedFile(body["name"], body))
    return {"file": body}


def _stored(request: web.Request) -> EmulatedFile:
    file_id = request.match_info["file_id"]
    found = request.app[emulator_state_key].files.get(f"files/{file_id}")
    if found is None:
        raise missing_file(file_id)
    return found


async def get_file(request: web.Request) -> web.StreamResponse:
    return json_response(_stored(request).resource, DEFAULT_TIER)


async def delete_file(request: web.Request) -> web.StreamResponse:
    found = _stored(request)
    del request.app[emulator_state_key].files[found.name]
    return json_response({}, DEFAULT_TIER)


async def download_file(request: web.Request) -> web.StreamResponse:
    found = _stored(request)
    if request.query.get("alt") != "media":
        raise ApiError(400, "Download requires alt=media.")
    if found.data is None:
        # The emulator's wording of what the SDK says before it would send this.
        raise ApiError(400, "Only generated files can be downloaded.")
    mime = found.resource.get("mimeType", "application/octet-stream")
    return web.Response(body=found.data, content_type=mime, headers={TIER_HEADER: DEFAULT_TIER})


async def list_files(request: web.Request) -> web.StreamResponse:
    files = list(request.app[emulator_state_key].files.values())
    page = page_of(request, files, _DEFAULT_PAGE_SIZE)
    body: Json = {}
    if page.items:
        body["files"] = [f.resource for f in page.items]
    if page.next_token is not None:
        body["nextPageToken"] = page.next_token
    return json_response(body, DEFAULT_TIER)


def add_file_routes(router: web.UrlDispatcher, version: str) -> None:
    router.add_post(f"/upload/{version}/files", upload_file)
    router.add_get(f"/{version}/files", list_files)
    one = f"/{version}/files/{{file_id:[^/:]+}}"
    router.add_get(one, get_file)
    router.add_delete(one, delete_file)
    router.add_get(one + ":download", download_file)


async def _count_body(request: web.Request, kept: bytearray | None = None) -> int:
    """Read the request body as it arrives, keeping its length, and into ``kept`` the
    bytes up to ``MAX_KEPT_FILE_BYTES`` (a batch reads its JSONL input file from there)."""
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if kept is not None and len(kept) <= MAX_KEPT_FILE_BYTES:
            kept.extend(chunk)
    return size


async def upload_file(request: web.Request) -> web.StreamResponse:
    state = request.app[emulator_state_key]
    command = request.headers.get("x-goog-upload-command", "").lower()
    upload_id = request.query.get("upload_id")

    if "start" in command:
        metadata = await json_body(request) if request.can_read_body else {}
        file = metadata.get("file")
        file = file if isinstance(file, dict) else {}
        declared = request.headers.get("x-goog-upload-header-content-type") or get_field(
            file, "mimeType"
        )
        display = get_field(file, "displayName")
        upload_id = secrets.token_urlsafe(24)
        state.upload_sessions[upload_id] = UploadSession(
            mime_type=str(declared or "application/octet-stream"),
            display_name=display if isinstance(display, str) else None,
        )
        while len(state.upload_sessions) > MAX_UPLOAD_SESSIONS:
            state.upload_sessions.popitem(last=False)
        version = request.match_info["version"]
        url = (
            f"{request.scheme}://{request.host}/upload/{version}/files"
            f"?upload_id={upload_id}&upload_protocol=resumable"
        )
        return web.Response(
            headers={
                "x-goog-upload-url": url,
                "x-goog-upload-status": "active",
                TIER_HEADER: DEFAULT_TIER,
            }
        )

    if upload_id is not None:
        session = state.upload_sessions.get(upload_id)
        if session is None:
            raise ApiError(404, "Unknown upload session.")
        session.received += await _count_body(request, session.data)
        if "finalize" not in command:
            return web.Response(
                headers={"x-goog-upload-status": "active", TIER_HEADER: DEFAULT_TIER}
            )
        del state.upload_sessions[upload_id]
        body = _file_resource(request, session.received, session.mime_type, session.display_name)
        state.keep_file(body["file"]["name"], bytes(session.data))
        return web.json_response(
            body, headers={"x-goog-upload-status": "final", TIER_HEADER: DEFAULT_TIER}
        )

    data = bytearray()
    size = await _count_body(request, data)
    mime = request.headers.get("content-type", "application/octet-stream")
    body = _file_resource(request, size, mime, None)
    state.keep_file(body["file"]["name"], bytes(data))
    return json_response(body, DEFAULT_TIER)
