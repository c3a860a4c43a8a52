"""Faults between the proxy and its database: a COMMIT whose reply is lost, and a
PostgreSQL server stopped and started while calls go on. Each ends with the
database compared to the upstream's ledger: every response once, none twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from proxy.server.typedefs import journal_key, writer_key
from proxy.storage.migrate import upgrade_async
from tests.factories import Stack, raw, start_stack
from tests.faults.helpers import (
    GENERATE,
    PROMPT,
    CommitReplyDropper,
    eventually,
    free_port,
    served,
)

pytestmark = pytest.mark.postgresql


async def _generate(stack: Stack, count: int) -> list[str]:
    """``count`` calls through the proxy; the response ids the client received."""
    ids = []
    for _ in range(count):
        status, _, body = await raw(
            "POST", stack.url(GENERATE), headers=stack.headers(), json=PROMPT
        )
        assert status == 200, body
        ids.append(json.loads(body)["responseId"])
    return ids


def _assert_each_response_stored_once(rows: list[dict[str, Any]], received: list[str]) -> None:
    stored = [r["response_id"] for r in rows]
    assert len(stored) == len(set(stored)), "a record was doubled"
    assert sorted(stored) == sorted(received)


async def test_a_commit_whose_reply_is_lost_is_retried_without_doubling(
    postgres_url: str, tmp_path: Path, aiohttp_server: Any
):
    await upgrade_async(postgres_url)
    url = make_url(postgres_url)
    relay = CommitReplyDropper(url.port or 5432, url.host or "127.0.0.1")
    port = await relay.start()
    try:
        relayed = url.set(port=port).render_as_string(hide_password=False)
        stack = await start_stack(aiohttp_server, tmp_path, relayed)
        # one call first: the key is then cached, so only the writer commits from now on
        received = await _generate(stack, 1)
        await stack.app[writer_key].flush()
        for burst in range(6):
            relay.drop = 1  # the next COMMIT's reply never comes back
            received += await _generate(stack, 5 if burst else 4)
            await stack.app[writer_key].flush()  # the writer retries until committed
        rows = await stack.records()
        assert relay.dropped == 6
        assert stack.app[writer_key].failed_batches_total == 6
        assert served(stack.upstream) == 30
        _assert_each_response_stored_once(rows, received)
        await stack.close()
    finally:
        await relay.close()


# ---------------------------------------------------------------- a private PostgreSQL


class PrivateCluster:
    """A PostgreSQL cluster of our own on a spare port, which the test may stop."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        assert bins, "PostgreSQL server binaries (initdb, pg_ctl) are needed"
        self.bin = bins[-1]
        self.port = free_port()
        # Not under pytest's tmp_path: the server's OS user must reach its directory.
        self.dir = Path(tempfile.mkdtemp(prefix="gemini-meter-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as the postgres OS user.
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    made = PrivateCluster()
    made.start()
    try:
        yield made
    finally:
        made.remove()


async def test_records_made_while_postgresql_is_down_arrive_once_it_is_back(
    cluster: PrivateCluster, tmp_path: Path, aiohttp_server: Any
):
    await upgrade_async(cluster.url)
    stack = await start_stack(
        aiohttp_server,
        tmp_path,
        cluster.url,
        key_cache_ttl_seconds=600,  # the keys stay known while the database is away
    )
    received = await _generate(stack, 10)
    await stack.app[writer_key].flush()
    cluster.stop()
    # the proxy keeps serving; the records wait in the journal
    received += await _generate(stack, 10)
    journal = stack.app[journal_key]
    assert journal is not None
    await journal.flush()
    assert journal.held_bytes > 0
    cluster.start()

    async def all_stored() -> bool:
        try:
            return len(await stack.records()) >= 20
        except Exception:
            return False  # the pool may hand out a connection from before the restart

    await eventually(all_stored, what="the records written after the restart")
    rows = await stack.records()
    assert served(stack.upstream) == 20
    _assert_each_response_stored_once(rows, received)

    async def trimmed() -> bool:
        return journal.held_bytes == 0

    await eventually(trimmed, what="the journal trimmed once everything is committed")
    await stack.close()
