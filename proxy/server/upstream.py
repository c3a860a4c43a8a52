"""The upstream leg: one request on the app's upstream ``Client``, and its answer.

Third on a request's path, after ``admission``: ``open_upstream`` sends the call to
the Gemini API with its raw path and query as the client sent them
(``upstream_target``), the client's key swapped for the upstream key in
``virtual_keys`` mode (``auth.key_carriers``) and hop-by-hop headers dropped; a
metered call asks for no encoding the tap cannot undo. A body admission did not
read streams through as it arrives, within ``max_request_bytes`` (and, on a
keyless upload leg, an idle timeout). Connection failures become 502, silence
504; a client whose own body broke off on the way gets its own error instead.

For the relays in ``forward`` (and ``owned``, ``live``): ``response_headers`` is
what of the upstream's head goes back to the client, ``read_whole`` reads a body
whole, and ``Decoder`` undoes gzip/deflate on a copy for the tap, the client
getting the bytes as they came.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote_plus

import aiohttp
from yarl import URL

from ..errors import (
    InvalidArgument,
    ProxyError,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..settings import AuthMode
from .admission import Call, too_large
from .auth import key_carriers
from .client import InvalidHeader, Response
from .typedefs import ApiRequest, settings_key, upstream_client_key

__all__ = [
    "HOP_BY_HOP",
    "UPSTREAM_FAILURES",
    "Decoder",
    "hop_by_hop",
    "open_upstream",
    "read_whole",
    "response_headers",
    "upstream_target",
    "upstream_url",
]

log = logging.getLogger("gemini_meter.proxy")

# RFC 9110 7.6.1, plus the non-standard ones proxies conventionally drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
# Encodings the tap can undo; for metered calls the upstream is asked for no other.
_DECODABLE = ("gzip", "deflate", "identity")
# Every client-side failure, protocol errors included (a bad status line, broken
# chunking; ``client.UpstreamBroke`` is an OSError): the upstream failed, which is a 502,
# never the proxy's own 500. aiohttp's errors are the Live API's websocket client's.
UPSTREAM_FAILURES = (aiohttp.ClientError, OSError)
# The request encodings aiohttp's server undoes before the handler reads the body
# (``aiohttp.http_parser``: one token, matched case-insensitively). Such a body is
# forwarded decoded, without its Content-Encoding and with its own length.
_SERVER_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})
# Names a client key goes by in the query ("$key" is Google's system-parameter form).
_KEY_PARAMS = frozenset({"key", "$key"})


def upstream_target(raw_path: str, drop_key: bool, drop: frozenset[str] = _KEY_PARAMS) -> str:
    """The path and query sent upstream: the raw ones as the client sent them.

    The query is kept byte for byte (no re-encoding), except that the ``drop``
    parameters (a ``key``) are removed when the proxy supplies the credential itself.
    """
    path, sep, query = raw_path.partition("?")
    if sep and drop_key:
        kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) not in drop]
        query = "&".join(kept)
        sep = "?" if query else ""
    return path + sep + query


def upstream_url(
    base: str, raw_path: str, drop_key: bool, drop: frozenset[str] = _KEY_PARAMS
) -> URL:
    """The whole upstream URL (``upstream_target`` after ``base``), for the Live API's client."""
    return URL(base + upstream_target(raw_path, drop_key, drop), encoded=True)


def hop_by_hop(headers: Mapping[str, str], always: frozenset[str]) -> set[str]:
    """The (lowercase) names not to pass on: ``always``, and those the message's own
    ``Connection`` header names (RFC 9110 7.6.1)."""
    drop = set(always)
    connection = headers.get("connection")
    if connection:
        drop.update(name.strip().lower() for name in connection.split(",") if name.strip())
    return drop


def _upstream_headers(request: ApiRequest, call: Call, decoded: bool) -> list[tuple[str, str]]:
    """The client's headers as they go upstream, taken in one pass: hop-by-hop ones
    (and those its ``Connection`` names, RFC 9110 7.6.1) dropped, the client's key
    swapped for the upstream key in ``virtual_keys`` mode, and the encodings asked for
    narrowed to those the tap can undo."""
    settings = request.app[settings_key]
    source = request.headers
    drop = hop_by_hop(source, _REQUEST_DROP)
    # The upstream key goes with keyed calls only: never with an upload's keyless byte
    # leg, or anyone could spend it by adding an upload_id to a request (in passthrough
    # mode the client's own key goes, as it came).
    key = None
    if settings.auth_mode is AuthMode.VIRTUAL_KEYS and call.principal is not None:
        assert settings.upstream_api_key is not None
        key = settings.upstream_api_key.get_secret_value()
        drop.update(key_carriers(source))
    if decoded:
        # aiohttp already undid the encoding: the bytes forwarded are the decoded
        # ones, so neither the client's encoding nor its length describes them.
        drop.add("content-encoding")
    encoding = None
    if call.drops_usage_chunk:
        # The events are rewritten for the client: have them come plain, not compressed.
        encoding = "identity"
    elif call.route.reads_response and "accept-encoding" in source:
        accepted = [
            token
            for token in source["accept-encoding"].split(",")
            if token.split(";")[0].strip().lower() in _DECODABLE
        ]
        encoding = ",".join(accepted) if accepted else "identity"
    if encoding is not None:
        drop.add("accept-encoding")
    headers = [(name, value) for name, value in source.items() if name.lower() not in drop]
    if encoding is not None:
        headers.append(("accept-encoding", encoding))
    if key is not None:
        headers.append(("x-goog-api-key", key))
    return headers


def _decoded_by_server(request: ApiRequest) -> bool:
    encoding = request.headers.get("content-encoding", "")
    return encoding.isascii() and encoding.lower() in _SERVER_DECODED


async def _limited(
    request: ApiRequest, limit: int, idle_timeout: float | None
) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused once it passes ``limit`` bytes
    or (with ``idle_timeout``) once the client sends nothing for that long."""
    seen = 0
    chunks = request.content.iter_any()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimeout("The request body stopped arriving.") from exc
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit)
        yield chunk


async def open_upstream(request: ApiRequest, call: Call) -> Response:
    settings = request.app[settings_key]
    client = request.app[upstream_client_key]
    virtual = settings.auth_mode is AuthMode.VIRTUAL_KEYS
    target = upstream_target(request.raw_path, drop_key=virtual)
    decoded = _decoded_by_server(request)
    headers = _upstream_headers(request, call, decoded)
    data: bytes | AsyncIterator[bytes] | None = call.body
    length: int | None = None
    if data is None and request.body_exists:
        limit = settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise too_large(limit)
        # A keyless upload leg must not hold its upstream connection forever.
        idle = settings.keyless_upload_idle_timeout_seconds if call.principal is None else None
        data = _limited(request, limit, idle)
        if not decoded:
            # A streamed upload keeps its length so the upstream sees no chunking.
            length = request.content_length
    try:
        return await client.request(request.method, target, headers, data, content_length=length)
    except ProxyError:
        raise
    except InvalidHeader as exc:
        raise InvalidArgument(str(exc)) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout("The Gemini API did not answer in time.") from exc
    except UPSTREAM_FAILURES as exc:
        log.warning("upstream unreachable: %s", type(exc).__name__)
        raise UpstreamUnavailable("The Gemini API could not be reached.") from exc


def response_headers(
    upstream: Response, *, keep_length: bool, keep_encoding: bool = True
) -> list[tuple[str, str]]:
    """The upstream's headers as they go to the client, taken in one pass: hop-by-hop
    ones (and those its ``Connection`` names) dropped, and its length and encoding
    unless asked to keep them (a body the proxy rewrote has neither)."""
    source = upstream.headers
    drop = hop_by_hop(source, HOP_BY_HOP)
    if not keep_length:
        drop.add("content-length")
    if not keep_encoding:
        drop.add("content-encoding")
    return [(name, value) for name, value in source.items() if name.lower() not in drop]


class Decoder:
    """Undoes gzip/deflate on a copy of the body for the tap; the client gets the original."""

    __slots__ = ("_z",)

    def __init__(self, encoding: str) -> None:
        # wbits 47 accepts both gzip and zlib headers. A body it cannot undo stops
        # feeding the tap, so its usage shows up as missing (and flagged), not wrong.
        self._z: zlib._Decompress | None = (
            zlib.decompressobj(47) if encoding in ("gzip", "deflate", "x-gzip") else None
        )

    def __call__(self, chunk: bytes) -> bytes:
        if self._z is None:
            return chunk
        try:
            return self._z.decompress(chunk)
        except zlib.error:
            self._z = None
            return b""


async def read_whole(upstream: Response, call: Call) -> tuple[bytes, bytes]:
    """The whole upstream body as it came, and decoded (gzip/deflate undone) for reading."""
    reading = time.perf_counter()
    try:
        body = await upstream.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("The Gemini API stopped answering mid-response.") from exc
    except UPSTREAM_FAILURES as exc:
        raise UpstreamUnavailable("The Gemini API connection broke mid-response.") from exc
    finally:
        call.upstream_wait += time.perf_counter() - reading
    encoding = upstream.headers.get("content-encoding", "identity").lower()
    return body, (Decoder(encoding)(body) if encoding != "identity" else body)
