"""Real Gemini responses recorded by others, replayed through the proxy.

A replay upstream serves each recording in ``tests/fixtures/recorded/`` (see
its README for where each comes from) byte for byte, streams in small
pieces; the proxy relays it and meters it, and the stored categories must be
the figures read by hand off the recording, written here literally. None of
these bodies came from the emulator, so they catch a parser that only
understands what the emulator says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.factories import StackFactory, raw

RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"
# Small enough that events, lines and UTF-8 sequences are split across writes.
PIECE = 7


async def _replay_upstream(aiohttp_server: Any, name: str, content_type: str) -> TestServer:
    body = (RECORDED / name).read_bytes()

    async def serve(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for start in range(0, len(body), PIECE):
            await response.write(body[start : start + PIECE])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    server: TestServer = await aiohttp_server(app)
    return server


def categories(record: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "input_tokens",
        "cached_tokens",
        "intermediate_tokens",
        "output_tokens",
        "thinking_tokens",
        "total_tokens",
        "grounding",
        "code_execution_calls",
        "code_execution_errors",
        "parse_error",
        "total_mismatch",
    )
    return {key: record[key] for key in keys}


GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
INTERACTIONS = "/v1beta/interactions"

# name, path, content type, request body, expected record (read off the recording)
CASES = [
    pytest.param(
        "generate_code_execution_search_sdk_dump.json",
        GENERATE,
        "application/json; charset=UTF-8",
        {"contents": [{"parts": [{"text": "Find syntactially correct code..."}]}]},
        {
            "input_tokens": 22,  # prompt_token_count, cached included
            "cached_tokens": 16,  # cached_content_token_count
            "intermediate_tokens": 303,  # tool_use_prompt_token_count
            "output_tokens": 212,  # candidates_token_count
            "thinking_tokens": 114,  # thoughts_token_count
            "total_tokens": 651,  # total_token_count = 22 + 303 + 212 + 114
            "grounding": {"google_search": 1},  # web_search_queries: one query
            "code_execution_calls": 2,  # two executable_code parts
            "code_execution_errors": 0,  # both results OUTCOME_OK
            "parse_error": False,
            "total_mismatch": False,
        },
        id="code-execution-search-thinking-cached",
    ),
    pytest.param(
        "generate_cached_content.json",
        GENERATE,
        "application/json; charset=UTF-8",
        {"contents": [{"parts": [{"text": "Please summarize this transcript"}]}]},
        {
            "input_tokens": 323388,
            "cached_tokens": 323383,
            "intermediate_tokens": 0,
            "output_tokens": 397,
            "thinking_tokens": 0,
            "total_tokens": 323785,  # 323388 + 397
            "grounding": {},
            "code_execution_calls": 0,
            "code_execution_errors": 0,
            "parse_error": False,
            "total_mismatch": False,
        },
        id="explicit-cache",
    ),
    pytest.param(
        "generate_search_grounding.json",
        GENERATE,
        "application/json; charset=UTF-8",
        {"contents": [{"parts": [{"text": "What is the current Google stock price?"}]}]},
        {
            "input_tokens": 8,
            "cached_tokens": 0,
            "intermediate_tokens": 0,
            "output_tokens": 64,
            "thinking_tokens": 0,
            "total_tokens": 72,
            "grounding": {"google_search": 1},  # webSearchQueries: one query
            "code_execution_calls": 0,
            "code_execution_errors": 0,
            "parse_error": False,
            "total_mismatch": False,
        },
        id="search-grounding",
    ),
    pytest.param(
        "interaction_stream_streaming_guide.sse",
        INTERACTIONS,
        "text/event-stream",
        {"model": "gemini-3.8-flash", "input": "Count from 1 to 25.", "stream": True},
        {
            "input_tokens": 11,
            "cached_tokens": 0,
            "intermediate_tokens": 0,
            "output_tokens": 90,
            "thinking_tokens": 245,
            "total_tokens": 346,  # 11 + 90 + 245
            "grounding": {},
            "code_execution_calls": 0,
            "code_execution_errors": 0,
            "parse_error": False,
            "total_mismatch": False,
        },
        id="interactions-stream-docs",
    ),
    pytest.param(
        "interaction_stream_thinking_guide.sse",
        INTERACTIONS,
        "text/event-stream",
        {"model": "gemini-3.8-flash", "input": "Alice, Bob, and Carol...", "stream": True},
        {
            "input_tokens": 62,
            "cached_tokens": 0,
            "intermediate_tokens": 0,
            "output_tokens": 171,
            "thinking_tokens": 297,
            "total_tokens": 530,  # 62 + 171 + 297
            "grounding": {},
            "code_execution_calls": 0,
            "code_execution_errors": 0,
            "parse_error": False,
            "total_mismatch": False,
        },
        id="interactions-stream-thinking-docs",
    ),
]


@pytest.mark.parametrize(("name", "path", "content_type", "request_body", "expected"), CASES)
async def test_a_recorded_response_is_metered_as_read_by_hand(
    make_stack: StackFactory,
    aiohttp_server: Any,
    name: str,
    path: str,
    content_type: str,
    request_body: dict[str, Any],
    expected: dict[str, Any],
):
    upstream = await _replay_upstream(aiohttp_server, name, content_type)
    stack = await make_stack(upstream=str(upstream.make_url("")).rstrip("/"))
    status, _, body = await raw("POST", stack.url(path), headers=stack.headers(), json=request_body)
    assert status == 200
    assert body == (RECORDED / name).read_bytes()  # relayed untouched
    [record] = await stack.records()
    assert categories(record) == expected
