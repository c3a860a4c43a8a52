"""Throughput of the usage writer: records/s into SQLite and PostgreSQL, journal off and on.

Pushes ``--records`` usage records through ``storage.writer.UsageWriter`` the way the proxy
does (``Recorder`` prices a ``UsageRecord`` and calls ``submit``), into a fresh SQLite file
(WAL, the embedded default) and a fresh PostgreSQL database migrated to head, each with and
without the durable journal (opened as the app opens it, with the default group-commit
interval), and reports for each:

- records/s: records submitted over the time from the first submit until ``flush()``
  returns (every record committed);
- event-loop CPU per record: the CPU time of the thread running the event loop, over the
  same span, per record; ``submit`` alone is also shown (the part the request path pays);
- process CPU per record: every thread of this process (SQLite's and the journal's
  included; PostgreSQL's own server processes are not);
- loop lag: how late a 1 ms timer on the same loop fires meanwhile (p99 and max), the
  wait a request being served by this process would see;
- of target: records/s over issue 10's target for the database (``TARGETS``: 10,000 for
  SQLite, 20,000 for PostgreSQL, journal on or off), 1.00 or more when it is met.

Records arrive ``--arrival`` per loop iteration (a busy proxy finishes several calls per
iteration), are realistic (usage split by modality, labels, an interaction id on some,
priced by the shipped catalog) and are built before the clock starts: the request path
builds them whatever the writer does. Rows are checked afterwards: every record stored once.

``--baseline`` also runs, in the same process and interleaved, the writer as it was before
its fast path: batches written through SQLAlchemy's ORM statements
(``storage.writes.insert_usage_rows``), each at most ``batch_size`` rows. The ratio of the
two is what the fast path buys.

    python benchmarks/bench_writer.py --records 20000 --reps 3 --baseline
    python benchmarks/bench_writer.py --databases sqlite --records 5000   # a quick look

PostgreSQL: the server at ``GEMINI_METER_TEST_PG_URL`` (default the tests' one); a database
``gemini_meter_bench_<random>`` is made there and dropped afterwards. Machines are noisy:
compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, pool, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.metering.records import EndpointKind, Principal, Usage, UsageRecord  # noqa: E402
from proxy.pricing import load_catalog, price  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from proxy.storage.accounts import create_key  # noqa: E402
from proxy.storage.bulk import SessionStore  # noqa: E402
from proxy.storage.journal import Journal  # noqa: E402
from proxy.storage.migrate import upgrade_async  # noqa: E402
from proxy.storage.schema import UsageRow, make_engine, make_sessionmaker  # noqa: E402
from proxy.storage.writer import UsageWriter  # noqa: E402

PG_SERVER_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
SECRET = b"bench-secret-bench-secret-bench!"
MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.5-flash", "gemini-2.5-flash-lite"]
# Issue 10's targets, records/s the writer sustains, the durable journal on.
TARGETS = {"sqlite": 10_000, "postgresql": 20_000}
# The journal as the app opens it by default: a group commit gathers this long.
SYNC_INTERVAL = Settings.journal_sync_interval_ms / 1000
# The writer's flush interval as the app opens it by default.
FLUSH_INTERVAL = Settings.writer_flush_interval_seconds


# ------------------------------------------------------------------ records


def make_records(principals: list[Principal], count: int, seed: int) -> list[UsageRecord]:
    """``count`` records like the recorder's: priced, with modalities, labels, interactions."""
    rng = random.Random(seed)
    catalog = load_catalog(None)
    now = datetime.now(UTC)
    records = []
    for n in range(count):
        principal = principals[n % len(principals)]
        model = MODELS[n % len(MODELS)]
        prompt = rng.randint(20, 40_000)
        cached = rng.choice([0, 0, prompt // 2])
        image = rng.choice([0, 0, 258])
        output = rng.randint(1, 2_000)
        thinking = rng.choice([0, rng.randint(1, 4_000)])
        usage = Usage(
            input_tokens=prompt,
            cached_tokens=cached,
            output_tokens=output,
            thinking_tokens=thinking,
            total_tokens=prompt + output + thinking,
            input_by_modality={"TEXT": prompt - image, **({"IMAGE": image} if image else {})},
            cached_by_modality={"TEXT": cached} if cached else {},
            output_by_modality={"TEXT": output},
        )
        interaction = n % 10 == 0
        streamed = n % 3 == 0
        created = now - timedelta(microseconds=rng.randint(0, 10**9))
        record = UsageRecord(
            request_id=uuid.uuid4().hex,
            created_at=created,
            principal=principal,
            model=model,
            endpoint=(
                EndpointKind.INTERACTION_CREATE
                if interaction
                else EndpointKind.STREAM_GENERATE_CONTENT
                if streamed
                else EndpointKind.GENERATE_CONTENT
            ),
            streamed=streamed,
            upstream_status=200,
            latency_seconds=rng.uniform(0.2, 30.0),
            ttfb_seconds=rng.uniform(0.1, 2.0) if streamed else None,
            usage=usage,
            interaction_id=f"v1_{uuid.uuid4().hex}" if interaction else None,
            response_id=uuid.uuid4().hex[:22],
            labels={"project": f"p{n % 7}", "env": "prod"} if n % 2 else {},
            requested_service_tier="standard" if n % 5 == 0 else None,
        )
        record.cost = price(catalog, model, usage, at=created)
        records.append(record)
    return records


# ------------------------------------------------------------------ databases


async def _admin(server: str, *statements: str) -> None:
    engine = create_async_engine(server, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


class Databases:
    """Fresh databases on demand: an SQLite file each time, or a recreated PG schema."""

    def __init__(self, workdir: Path, pg_server: str | None) -> None:
        self.workdir = workdir
        self.pg_server = pg_server
        self.pg_url: str | None = None
        self.count = 0

    async def __aenter__(self) -> Databases:
        if self.pg_server is not None:
            name = f"gemini_meter_bench_{uuid.uuid4().hex[:12]}"
            await _admin(self.pg_server, f'CREATE DATABASE "{name}"')
            self.pg_url = (
                make_url(self.pg_server).set(database=name).render_as_string(hide_password=False)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.pg_url is not None and self.pg_server is not None:
            name = make_url(self.pg_url).database
            await _admin(self.pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def fresh(self, kind: str) -> str:
        self.count += 1
        if kind == "sqlite":
            url = f"sqlite+aiosqlite:///{self.workdir / f'bench-{self.count}.db'}"
        else:
            assert self.pg_url is not None
            url = self.pg_url
            await _admin(url, "DROP SCHEMA IF EXISTS public CASCADE", "CREATE SCHEMA public")
        await upgrade_async(url)
        return url


# ------------------------------------------------------------------ one run


@dataclass
class Run:
    seconds: float
    loop_cpu: float
    submit_cpu: float
    process_cpu: float
    records: int
    lag_p99: float  # seconds a 1 ms timer fired late, 99th percentile
    lag_max: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds


WriterFactory = Callable[..., UsageWriter]


async def run_once(
    url: str,
    records_count: int,
    arrival: int,
    journal_dir: Path | None,
    factory: WriterFactory,
    seed: int,
) -> Run:
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    journal = None
    try:
        async with sessionmaker.begin() as session:
            principals = [await _principal(session, n) for n in range(20)]
        records = make_records(principals, records_count, seed)
        if journal_dir is not None:
            journal = Journal(journal_dir, max_bytes=10**10, sync_interval=SYNC_INTERVAL)
            journal.open()
        writer = factory(sessionmaker, journal=journal)
        await writer.start()
        # a first write outside the clock: connections opened, statements prepared
        warm = make_records(principals, 1, seed + 1)[0]
        writer.submit(warm)
        await writer.flush()

        submit_cpu = 0.0
        lags: list[float] = []
        running = True

        async def probe() -> None:
            # How late a 1 ms timer fires: what a request on this loop would wait.
            while running:
                began = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - began - 0.001)

        # The records were built beforehand, all at once: a meter never holds thousands of
        # them (each lives for its call), and `serve` freezes what its start made
        # (server.app). Frozen here too, so the collector walks what the writer makes,
        # as in the meter, and not the benchmark's own stock at every full collection.
        gc.freeze()
        prober = asyncio.create_task(probe())
        loop0, cpu0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
        for start in range(0, len(records), arrival):
            began = time.thread_time()
            for record in records[start : start + arrival]:
                writer.submit(record)
            submit_cpu += time.thread_time() - began
            await asyncio.sleep(0)
        await writer.flush()
        wall1, cpu1, loop1 = time.perf_counter(), time.process_time(), time.thread_time()
        running = False
        await prober
        await writer.close()
        if journal is not None:
            await journal.close()
            journal = None

        async with sessionmaker() as session:
            stored = await session.scalar(select(func.count()).select_from(UsageRow))
        if stored != records_count + 1:
            raise RuntimeError(f"{stored} rows stored for {records_count + 1} records")
        if writer.failed_rows_total or writer.dropped_total or writer.failed_batches_total:
            raise RuntimeError("the writer failed batches, refused or dropped rows")
        lags.sort()
        return Run(
            wall1 - wall0,
            loop1 - loop0,
            submit_cpu,
            cpu1 - cpu0,
            records_count,
            lags[int(0.99 * (len(lags) - 1))],
            lags[-1],
        )
    finally:
        gc.unfreeze()  # this run's records can go: the next run builds its own
        if journal is not None:
            await journal.close()
        await engine.dispose()


async def _principal(session: AsyncSession, n: int) -> Principal:
    info, _ = await create_key(session, SECRET, f"user{n}", f"team{n % 4}")
    return Principal(info.user_id, f"user{n}", info.team_id, f"team{n % 4}", info.id)


# ------------------------------------------------------------------ the ORM baseline


def orm_writer(sessionmaker: async_sessionmaker[AsyncSession], **options: Any) -> UsageWriter:
    """The writer as it was before ``storage.bulk``: batches written through SQLAlchemy's
    ORM statements, each at most ``batch_size`` rows. The baseline for the ratios."""
    options.setdefault("max_batch_size", options.get("batch_size", 500))
    writer = UsageWriter(sessionmaker, **options)
    writer._store = SessionStore(sessionmaker)
    return writer


# ------------------------------------------------------------------ main


def _median(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(run) for run in runs)


async def main(args: argparse.Namespace) -> str:
    pg_server = os.environ.get("GEMINI_METER_TEST_PG_URL", PG_SERVER_DEFAULT)
    writers: dict[str, WriterFactory] = {"writer": UsageWriter}
    if args.baseline:
        writers = {"ORM baseline": orm_writer, **writers}
    results: dict[tuple[str, str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        server = pg_server if "postgresql" in args.databases else None
        async with Databases(workdir, server) as databases:
            for rep in range(args.reps):
                for kind in args.databases:
                    for journal in ("off", "on"):
                        for name, factory in writers.items():
                            url = await databases.fresh(kind)
                            journal_dir = None
                            if journal == "on":
                                journal_dir = workdir / f"journal-{databases.count}"
                            run = await run_once(
                                url,
                                args.records,
                                args.arrival,
                                journal_dir,
                                functools.partial(
                                    factory,
                                    batch_size=args.batch_size,
                                    flush_interval=FLUSH_INTERVAL,
                                ),
                                rep,
                            )
                            results.setdefault((kind, journal, name), []).append(run)
                            print(
                                f"rep {rep + 1} {kind:10} journal {journal:3} {name:12} "
                                f"{run.rate:9.0f} records/s, loop "
                                f"{run.loop_cpu / run.records * 1e6:6.1f} us/record",
                                file=sys.stderr,
                            )
    return _table(args, results)


def _table(args: argparse.Namespace, results: dict[tuple[str, str, str], list[Run]]) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.records} records per run, "
        f"{args.arrival} submitted per loop iteration, medians of {args.reps} interleaved "
        f"repetitions; batch size {args.batch_size}, flush interval {FLUSH_INTERVAL:g} s.",
        "",
        "| database | journal | writer | records/s | of target | loop CPU µs/record "
        "| of which submit | process CPU µs/record | loop lag p99 ms | loop lag max ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, journal, name), runs in results.items():
        rate = _median(runs, lambda r: r.rate)
        lines.append(
            f"| {kind} | {journal} | {name} | {rate:,.0f} | {rate / TARGETS[kind]:.2f} "
            f"| {_median(runs, lambda r: r.loop_cpu / r.records * 1e6):.1f} "
            f"| {_median(runs, lambda r: r.submit_cpu / r.records * 1e6):.1f} "
            f"| {_median(runs, lambda r: r.process_cpu / r.records * 1e6):.1f} "
            f"| {_median(runs, lambda r: r.lag_p99 * 1e3):.2f} "
            f"| {_median(runs, lambda r: r.lag_max * 1e3):.1f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--arrival", type=int, default=50, help="records per loop iteration")
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--baseline", action="store_true", help="also run the ORM writer")
    parser.add_argument("--batch-size", type=int, default=500, help="the writer's batch_size")
    parser.add_argument(
        "--dir",
        default=None,
        help="where the SQLite files and journals go (default: the system's temporary"
        " directory; it must be a real disk, not tmpfs, for fsync to cost what it costs)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    print(asyncio.run(main(parse_args())))
