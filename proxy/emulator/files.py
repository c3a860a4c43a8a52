"""File uploads: ``POST /upload/{v}/files``.

The body is streamed in and counted. A plain upload answers ``{"file": {...}}``
at once; the SDK's resumable protocol (``x-goog-upload-command: start`` then
``upload, finalize`` to the returned ``x-goog-upload-url``) works too, the
upload URL acting as the credential the way Google's does.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

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
    timestamp,
)


@dataclass
class UploadSession:
    mime_type: str
    display_name: str | None
    received: int = 0
    data: bytearray = field(default_factory=bytearray)


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
    return {"file": body}


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
