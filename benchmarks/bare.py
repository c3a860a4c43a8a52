"""A bare aiohttp forwarder for the benchmarks: what relaying alone costs, with no metering.

Gemini Meter is an aiohttp server that forwards through an aiohttp client. This is the
least such a forwarder does: take the request, send it on with the client's headers
(hop-by-hop ones dropped), and relay the answer as it comes, chunk by chunk. It reads
no usage, checks no key, records nothing. ``compare.py`` runs it beside the meter, so
the meter's CPU per call can be set against the floor aiohttp itself puts under any
forwarder built on it, as well as against the upstream stub's.

    python benchmarks/bare.py --port 8092 --upstream http://127.0.0.1:8091

``GET /_bare/ready`` answers 200 once the client session is open.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web

HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host"}
)
session_key: Final = web.AppKey("session", aiohttp.ClientSession)
upstream_key: Final = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = await request.read()
    async with request.app[session_key].request(
        request.method,
        request.app[upstream_key] + request.path_qs,
        headers=headers,
        data=body,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    ) as upstream:
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return web.Response(status=upstream.status, body=await upstream.read(), headers=out)
        out.pop("Content-Length", None)
        response = web.StreamResponse(status=upstream.status, headers=out)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def ready(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[upstream_key] = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), cookie_jar=aiohttp.DummyCookieJar()
        ) as client:
            app[session_key] = client
            yield

    app.cleanup_ctx.append(session)
    app.router.add_get("/_bare/ready", ready)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
