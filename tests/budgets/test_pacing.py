"""The budget tasks that read spend back from the database pace themselves.

A refresh or an alert pass reads a window's spend back from the database (its rollups;
the records themselves for an alert's split), which takes longer on a slow or busy
database (benchmarks/bench_budgets.py). Each waits at least ``PACE`` times its last pass's
duration before the next, however short its interval: checked on the gaps between passes
that take a tenth of a second, against intervals a tenth of that. The passes are stand-ins
that only sleep; the loops that schedule them are the real ones. Slowness of the machine
can only widen the gaps, so no assertion here depends on its speed.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.budgets.alerts import AlertEvaluator
from proxy.budgets.engine import PACE, BudgetEngine, build_budget_metrics
from proxy.settings import Settings
from proxy.storage.schema import make_engine, make_sessionmaker

PASS_SECONDS = 0.1


class _Passes:
    """When each stand-in pass began and ended, on the loop's clock."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(PASS_SECONDS)
        self.spans.append((began, loop.time()))

    async def wait_for(self, count: int) -> None:
        for _ in range(200):  # a deadline of 10 s, not a timing assertion
            if len(self.spans) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {len(self.spans)} passes in 10 s")

    def assert_paced(self) -> None:
        for (began, ended), (next_began, _) in itertools.pairwise(self.spans):
            assert next_began - ended >= PACE * (ended - began) * 0.99, self.spans


async def test_alert_passes_wait_four_times_their_duration(tmp_path: Path) -> None:
    passes = _Passes()

    class Evaluator(AlertEvaluator):
        async def evaluate(self) -> list[int]:
            await passes.run()
            return []

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    # Records arrive all the time (the count moves at every look): without pacing a pass
    # would follow the last after the 10 ms debounce.
    evaluator = Evaluator(
        make_sessionmaker(engine),
        interval=0.01,
        debounce=0.01,
        changes=itertools.count().__next__,
    )
    evaluator.start()
    try:
        await passes.wait_for(3)
    finally:
        await evaluator.stop()
        await engine.dispose()
    passes.assert_paced()


async def test_budget_refreshes_wait_four_times_their_duration(tmp_path: Path) -> None:
    passes = _Passes()
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    budgets = BudgetEngine(
        Settings(budget_refresh_seconds=0.01, key_secret_file=tmp_path / "secret"),
        make_sessionmaker(engine),
        build_budget_metrics(CollectorRegistry()),
    )
    budgets.refresh = passes.run  # type: ignore[method-assign]
    await budgets.start()  # the first refresh, awaited, then the loop
    try:
        await passes.wait_for(3)
    finally:
        await budgets.close()
        await engine.dispose()
    # The loop's own passes: the one start() awaited is not timed by it.
    passes.spans = passes.spans[1:]
    passes.assert_paced()
