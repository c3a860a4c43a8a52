"""What a budget costs the database: one refresh and one alert pass over a busy window.

Both background tasks of ``budgets`` read a budget's spend back from the database:
``BudgetEngine.refresh`` every ``budget_refresh_seconds`` (5 s), for every budget, and
``AlertEvaluator.evaluate`` every second while records arrive, for every budget with a
threshold left to alert. Summed over the records of the budget's window, their cost would
grow with them; read from the quarter-hour running totals (``usage_rollups``), it should
not. This measures it for one monthly USD budget on one user whose window holds
``--records`` records, in a fresh SQLite file (the embedded default) and a fresh
PostgreSQL database:

1. a thousand records like the proxy's (``bench_writer.make_records``) are written by
   ``UsageWriter``, then copied by SQL (each copy a new ``request_id``, no interaction)
   until the table holds ``--records``; all of them in the current month;
2. the budget's limit is far above the spend, so no threshold is reached: the pass a
   budget makes nearly all the time;
3. ``refresh`` and ``evaluate`` run ``--reps`` times each; the table gives the median
   wall time and this process's CPU time (SQLite works in this process's threads,
   PostgreSQL in its own server process).

    python benchmarks/bench_budgets.py                       # a million records, both databases
    python benchmarks/bench_budgets.py --databases sqlite --records 200000

PostgreSQL: the server at ``GEMINI_METER_TEST_PG_URL`` (default the tests' one), as for
``bench_writer``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_writer import PG_SERVER_DEFAULT, Databases, _principal, make_records  # noqa: E402
from proxy.budgets.alerts import AlertEvaluator  # noqa: E402
from proxy.budgets.engine import BudgetEngine, build_budget_metrics  # noqa: E402
from proxy.settings import Settings  # noqa: E402
from proxy.storage.schema import BudgetRow, UsageRow, make_engine, make_sessionmaker  # noqa: E402
from proxy.storage.writer import UsageWriter  # noqa: E402
from proxy.storage.writes import USAGE_COLUMNS  # noqa: E402

SEED_RECORDS = 1_000


async def fill(url: str, records: int) -> None:
    """Write ``SEED_RECORDS`` records through the writer, copy them up to ``records``, and
    add the budget on their user."""
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    try:
        async with sessionmaker.begin() as session:
            principal = await _principal(session, 0)
        writer = UsageWriter(sessionmaker)
        await writer.start()
        for record in make_records([principal], SEED_RECORDS, seed=1):
            writer.submit(record)
        await writer.close()
        copied = [name for name in USAGE_COLUMNS if name not in ("request_id", "interaction_id")]
        columns = ", ".join(copied)
        async with engine.begin() as connection:
            count, round_ = SEED_RECORDS, 0
            while count < records:
                round_ += 1
                # Each round doubles the table (at most up to ``records``): a copy of each
                # row with a request id of its own and no interaction.
                await connection.execute(
                    text(
                        f"INSERT INTO usage_records (request_id, interaction_id, {columns})"
                        f" SELECT request_id || '.{round_}.' || id, NULL, {columns}"
                        f" FROM usage_records ORDER BY id LIMIT {records - count}"
                    )
                )
                count = (
                    await connection.execute(select(func.count()).select_from(UsageRow))
                ).scalar_one()
            await connection.execute(text("ANALYZE"))
        async with sessionmaker.begin() as session:
            session.add(
                BudgetRow(
                    scope_kind="user",
                    scope_name=principal.user_name,
                    limit_usd=Decimal(10) ** 6,
                    window="monthly",
                    timezone="UTC",
                    thresholds=["0.5", "0.8", "1"],
                    mode="enforce",
                    webhook_format="json",
                )
            )
    finally:
        await engine.dispose()


async def timed(step: Callable[[], Awaitable[object]], reps: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``reps`` runs of ``step``."""
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        await step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


async def measure(url: str, reps: int) -> dict[str, tuple[float, float]]:
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    try:
        budgets = BudgetEngine(Settings(), sessionmaker, build_budget_metrics(CollectorRegistry()))
        evaluator = AlertEvaluator(sessionmaker)
        await budgets.refresh()  # warm: the connection, the compiled statements
        await evaluator.evaluate()
        found = {
            "refresh": await timed(budgets.refresh, reps),
            "alert pass": await timed(evaluator.evaluate, reps),
        }
        # Nothing alerted: the pass measured is the one without a threshold reached.
        async with sessionmaker() as session:
            alerted = (await session.execute(text("SELECT COUNT(*) FROM budget_alerts"))).scalar()
        assert alerted == 0, "a threshold was reached: the budget's limit is too low"
        return found
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> str:
    pg_server = os.environ.get("GEMINI_METER_TEST_PG_URL", PG_SERVER_DEFAULT)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = pg_server if "postgresql" in args.databases else None
        async with Databases(Path(tmp), server) as databases:
            for kind in args.databases:
                url = await databases.fresh(kind)
                await fill(url, args.records)
                for step, (wall, cpu) in (await measure(url, args.reps)).items():
                    print(f"{kind:10} {step:10} {wall:.3f} s, CPU {cpu:.3f} s", file=sys.stderr)
                    rows.append(f"| {kind} | {step} | {wall:.3f} | {cpu:.3f} |")
    header = (
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; one monthly USD budget on one user whose"
        f" window holds {args.records:,} records, no threshold reached; medians of"
        f" {args.reps} runs.\n\n"
        "| database | step | wall s | CPU s (this process) |\n|---|---|---:|---:|\n"
    )
    return header + "\n".join(rows) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    return parser.parse_args()


if __name__ == "__main__":
    print(asyncio.run(main(parse_args())))
