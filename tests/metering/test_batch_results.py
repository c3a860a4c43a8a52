"""Reading a batch's results: inline in its Operation, or line by line from its responses file.

Expected figures are read by hand off a real recorded response
(``tests/fixtures/recorded/batch_get_succeeded_inline.json``, see its README) or written
in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.metering.batches import (
    MAX_LINE_BYTES,
    InputRefused,
    ResultLines,
    grpc_http_status,
    inline_results,
    input_files,
    operation_model,
    read_result,
    responses_file,
    result_request_id,
)

RECORDED = Path(__file__).parent.parent / "fixtures" / "recorded"


def recorded_operation() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (RECORDED / "batch_get_succeeded_inline.json").read_bytes()
    )
    return loaded


def test_recorded_inline_results_read_from_response() -> None:
    operation = recorded_operation()
    results = inline_results(operation)
    assert results is not None
    # read by hand off the file: 8/8/16, 8/8/16, 8/9/17, no keys, all succeeded
    figures = [
        (r.index, r.key, r.status, r.summary.usage.input_tokens, r.summary.usage.output_tokens)
        for r in results
        if r.summary.usage is not None
    ]
    assert figures == [(0, None, 200, 8, 8), (1, None, 200, 8, 8), (2, None, 200, 8, 9)]
    assert [r.summary.usage.total_tokens for r in results if r.summary.usage] == [16, 16, 17]
    assert not any(r.summary.parse_error for r in results)
    assert results[0].summary.model == "gemini-2.5-flash-lite"
    assert operation_model(operation) == "gemini-2.5-flash-lite"
    assert responses_file(operation) is None


def test_output_carried_twice_is_read_once() -> None:
    operation = recorded_operation()
    metadata = operation["metadata"]
    assert isinstance(metadata, dict)
    response = operation["response"]
    assert isinstance(response, dict)
    # Real responses may repeat the output under metadata.output (the SDK reads that one):
    # the same three results, not six.
    metadata["output"] = {"inlinedResponses": response["inlinedResponses"]}
    results = inline_results(operation)
    assert results is not None and len(results) == 3


def test_pending_operation_has_no_results() -> None:
    pending = {"name": "batches/x", "metadata": {"state": "BATCH_STATE_PENDING"}}
    assert inline_results(pending) is None
    assert responses_file(pending) is None
    assert inline_results("garbage") is None


def test_responses_file_in_either_place() -> None:
    assert responses_file({"metadata": {"output": {"responsesFile": "files/batch-a"}}}) == (
        "files/batch-a"
    )
    assert responses_file({"response": {"responsesFile": "files/batch-b"}}) == "files/batch-b"


def test_read_result_shapes() -> None:
    ok = read_result(
        {"metadata": {"key": "k1"}, "response": {"usageMetadata": {"promptTokenCount": 3}}}, 4
    )
    assert (ok.index, ok.key, ok.status) == (4, "k1", 200)
    assert ok.summary.usage is not None and ok.summary.usage.input_tokens == 3
    line = read_result({"key": "k2", "error": {"code": 3, "message": "bad"}}, 0)
    assert (line.key, line.status, line.summary.usage, line.summary.parse_error) == (
        "k2",
        400,
        None,
        False,
    )
    # a response without usageMetadata is flagged, like any generateContent response
    assert read_result({"response": {"candidates": []}}, 0).summary.parse_error
    assert read_result([1, 2], 0).summary.parse_error
    assert read_result({"key": "k"}, 0).summary.parse_error


@pytest.mark.parametrize(
    ("code", "status"),
    [(3, 400), (5, 404), (8, 429), (13, 500), (14, 503), (4, 504), (500, 500), ("x", 500)],
)
def test_grpc_codes_map_to_http(code: object, status: int) -> None:
    assert grpc_http_status(code) == status


def test_request_ids_are_deterministic_and_distinct() -> None:
    assert result_request_id("batches/a", 0) == result_request_id("batches/a", 0)
    ids = {result_request_id(b, i) for b in ("batches/a", "batches/b") for i in range(3)}
    assert len(ids) == 6


FILE = (
    b'{"key":"a","response":{"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,'
    b'"totalTokenCount":7}}}\n'
    b"\n"
    b'{"key":"b","error":{"code":8,"message":"quota"}}\r\n'
    b"not json\n"
    b'{"response":{"usageMetadata":{"promptTokenCount":1,"totalTokenCount":1}}}'
)


def summary_of(lines: ResultLines, chunks: list[bytes]) -> list[tuple[int, str | None, int, bool]]:
    results = [r for chunk in chunks for r in lines.feed(chunk)] + lines.close()
    return [(r.index, r.key, r.status, r.summary.parse_error) for r in results]


def test_result_lines_however_the_download_is_cut() -> None:
    expected = [
        (0, "a", 200, False),
        (1, "b", 429, False),
        (2, None, 200, True),
        (3, None, 200, False),
    ]
    assert summary_of(ResultLines(), [FILE]) == expected
    for cut in range(1, len(FILE)):
        assert summary_of(ResultLines(), [FILE[:cut], FILE[cut:]]) == expected, cut
    assert summary_of(ResultLines(), [bytes([b]) for b in FILE]) == expected


def test_an_overlong_line_is_one_unreadable_result_and_not_kept() -> None:
    lines = ResultLines()
    piece = b"x" * (1024 * 1024)
    for _ in range(MAX_LINE_BYTES // len(piece) + 2):
        assert lines.feed(piece) == []
    assert len(lines._buf) == 0
    after = lines.feed(b'\n{"key":"z","response":{"usageMetadata":{"promptTokenCount":2}}}\n')
    assert [(r.index, r.key, r.summary.parse_error) for r in after] == [
        (0, None, True),
        (1, "z", False),
    ]
    assert lines.seen == 2


def test_input_files_every_spelling() -> None:
    assert input_files({"batch": {"inputConfig": {"fileName": "files/a"}}}) == {"files/a"}
    assert input_files({"batch": {"input_config": {"file_name": "files/b"}}}) == {"files/b"}
    both = {
        "batch": {
            "inputConfig": {"fileName": "files/a", "file_name": "files/c"},
            "input_config": {"fileName": "files/d"},
        }
    }
    assert input_files(both) == {"files/a", "files/c", "files/d"}
    inline: dict[str, object] = {"batch": {"inputConfig": {"requests": {"requests": []}}}}
    assert input_files(inline) == set()
    assert input_files(None) == set()
    for bad in (7, "", ["files/a"], {"name": "files/a"}):
        with pytest.raises(InputRefused):
            input_files({"batch": {"inputConfig": {"fileName": bad}}})
