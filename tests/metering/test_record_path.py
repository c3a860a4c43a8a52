"""Fuzzing the whole record path of a streamed response: framing, usage extraction,
the billing decision, the record, and the journal that keeps it.

``test_streams`` proves the taps never raise on arbitrary bytes. This goes on from
there, as ``server.forward`` does: whatever a stream carries (real events cut at
any byte, malformed events, garbage in between, any chunking) a streamed
response is always recorded (``billing`` never says "no record"), provisional
exactly when an interaction was left pending, and the record comes back from
the journal's file exactly as it went in.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.metering.parsers import PENDING, usage_due
from proxy.metering.records import EndpointKind, Principal, UsageRecord
from proxy.metering.streams import stream_tap
from proxy.server.forward import billing
from proxy.server.routes import Action
from proxy.storage.journal import USAGE, Journal, decode_frames
from proxy.storage.writes import usage_row, usage_values
from tests.metering.test_streams import (
    GENERATE_SSE,
    INTERACTION_SSE,
    chunks_at,
    event_like,
    event_types,
    field_names,
    sse_payloads,
)

ALICE = Principal(user_id=1, user_name="alice")
INTERACTION_EVENTS = sse_payloads(INTERACTION_SSE)
GENERATE_EVENTS = sse_payloads(GENERATE_SSE)

odd_event = st.builds(
    lambda kind, fields: json.dumps({**fields, "event_type": kind}).encode(),
    event_types,
    st.dictionaries(field_names, event_like, max_size=4),
)
garbage = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, bytes]:
    """(interactions?, body): real events, cut short, with odd events and garbage mixed in."""
    interactions = draw(st.booleans())
    real = INTERACTION_EVENTS if interactions else GENERATE_EVENTS
    kept = real[: draw(st.integers(0, len(real)))]
    payloads = list(kept)
    for _ in range(draw(st.integers(0, 3))):
        payloads.insert(
            draw(st.integers(0, len(payloads))), draw(odd_event | garbage | st.just(b"[DONE]"))
        )
    body = b"".join(b"data: " + p + b"\n\n" for p in payloads)
    return interactions, body[: draw(st.integers(0, len(body)))]


def _journal_round_trip(record: UsageRecord) -> dict[str, Any]:
    """The record's row as the journal's file holds it after its fsync."""

    async def go(directory: Path) -> dict[str, Any]:
        journal = Journal(directory, max_bytes=10**6)
        journal.open()
        tickets: list[int | None] = []
        assert journal.append(
            USAGE, usage_row(record), lambda kind, values, ticket: tickets.append(ticket)
        )
        await journal.flush()
        assert tickets != [None]
        assert journal.slot is not None
        data = b"".join(p.read_bytes() for p in sorted(journal.slot.glob("*.seg")))
        await journal.close()
        [(kind, names, values)], valid = decode_frames(data)
        assert (kind, valid) == (USAGE, len(data))
        return dict(zip(names, values, strict=True))

    with tempfile.TemporaryDirectory() as directory:
        return asyncio.run(go(Path(directory)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 20_000), max_size=30))
def test_every_streamed_response_is_recorded_and_journaled_whatever_it_carries(
    stream: tuple[bool, bytes], cuts: list[int]
) -> None:
    interactions, body = stream
    endpoint = (
        EndpointKind.INTERACTION_CREATE if interactions else EndpointKind.STREAM_GENERATE_CONTENT
    )
    action = Action.INTERACTION_CREATE if interactions else Action.STREAM_GENERATE
    tap = stream_tap(endpoint, sse=True)
    for chunk in chunks_at(body, cuts):
        tap.feed(chunk)
    summary = tap.finish()

    provisional = billing(action, 200, True, summary)
    assert provisional is not None, "a streamed response must always leave a record"
    # provisional exactly when an interaction was seen still pending
    assert provisional is (interactions and summary.status in PENDING)
    assert provisional is (interactions and not usage_due(summary.status))
    # an error answer is a final record too
    assert billing(action, 500, True, summary) is False

    record = UsageRecord(
        request_id="req-fuzz",
        created_at=datetime(2026, 11, 29, tzinfo=UTC),
        principal=ALICE,
        model=summary.model,
        endpoint=endpoint,
        streamed=True,
        upstream_status=200,
        latency_seconds=0.5,
        ttfb_seconds=0.1,
        interaction_id=summary.interaction_id,
        response_id=summary.response_id,
        parse_error=summary.parse_error and not provisional,
        provisional=provisional,
    )
    if summary.usage is not None:
        record.usage = summary.usage
    assert _journal_round_trip(record) == usage_values(record)
