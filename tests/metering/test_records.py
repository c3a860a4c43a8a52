"""proxy.metering.records: request ids, the idempotency key of every stored record."""

from __future__ import annotations

import os
import re

from proxy.metering.records import new_request_id


def test_request_ids_are_32_hex_digits_and_never_repeat():
    ids = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_ids_of_its_own():
    # A child forked after the parent drew ids must not repeat the parent's next ones:
    # the same id twice would be one record stored, the other skipped as a duplicate.
    new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = new_request_id()
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:20] != mine[:20]  # another random prefix, not just another count
