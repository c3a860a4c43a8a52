"""The one place a finished call is handed on: priced, counted, queued for storage.

``Recorder.finish`` is called by the proxy handler once per billable upstream
response. It never awaits: pricing is a pure function, and the writer's ``submit``
only writes the row to the journal (the journal's fsync and the database write
happen later, off the request path). The metrics (in-memory counters) are counted
at the loop's next turn, once the response this record describes is on its way:
the answer does not wait for them.
Budgets settle here: the estimate reserved at admission is replaced by what the
record counts (``budgets.engine.BudgetEngine.settle``, which never awaits).

An interaction is billed once: the recorder remembers the interactions whose
terminal record is *journaled* (not merely handed over: a record the journal
refused must not stop a later poll from billing it), and skips later responses
for them. A provisional record (a stream cut before the interaction was
terminal) never counts as billed, so the terminal one seen later goes through
and replaces it in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..pricing import Catalog, price
from ..server.metrics import Metrics
from ..storage.writer import UsageWriter
from .records import Principal, UsageRecord

if TYPE_CHECKING:
    from ..budgets.engine import BudgetEngine, Reservation

log = logging.getLogger("gemini_meter.recorder")

_SEEN_LIMIT = 100_000


class Recorder:
    def __init__(
        self,
        catalog: Catalog,
        writer: UsageWriter,
        metrics: Metrics,
        budgets: BudgetEngine | None = None,
    ) -> None:
        self._catalog = catalog
        self._budgets = budgets
        self._writer = writer
        self._metrics = metrics
        # Interactions this process already billed: spares the writer a conflicting
        # insert on every poll. The database's unique constraint is the guarantee.
        self._billed: OrderedDict[str, None] = OrderedDict()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def own(self, interaction_id: str, principal: Principal, model: str | None) -> tuple[Any, ...]:
        """Remember who created an interaction, for ownership checks in any process; the
        owner row journaled and queued (``writes.owner_row``)."""
        return self._writer.submit_owner(interaction_id, principal, model)

    def finish(self, record: UsageRecord, reservation: Reservation | None = None) -> bool:
        """Price, count and hand on ``record``, settling the call's budget
        ``reservation`` against it; never awaits.

        Returns whether the record is kept: True once it is journaled (written to the
        journal before this returns), False when it was skipped (an interaction billed
        already) or refused (a full journal with the ``drop`` policy, a full queue).
        """
        iid = record.interaction_id
        if iid is not None and iid in self._billed:
            if self._budgets is not None:
                self._budgets.release(reservation)
            return False
        try:
            # An unmetered route's zero tokens are not a zero cost: it stays unpriced.
            if not record.unmetered_route:
                record.cost = price(
                    self._catalog,
                    record.model,
                    record.usage,
                    service_tier=record.effective_service_tier or record.requested_service_tier,
                    at=record.created_at,
                )
        except Exception:
            # A pricing bug must not lose the record: it is stored unpriced and counted.
            log.exception("pricing failed for model %r", record.model)
        self._observe_soon(record)
        if self._budgets is not None:
            self._budgets.settle(record, reservation)
        kept = self._writer.submit(record)
        if kept and iid is not None and not record.provisional:
            self._billed_once(iid)
        return kept

    def _observe_soon(self, record: UsageRecord) -> None:
        """Count ``record`` in the metrics at the loop's next turn (at once without a loop).

        The caller writes its response right after ``finish`` returns, in the same turn.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._metrics.observe(record)
        else:
            loop.call_soon(self._metrics.observe, record)

    def _billed_once(self, interaction_id: str) -> None:
        self._billed[interaction_id] = None
        if len(self._billed) > _SEEN_LIMIT:
            self._billed.popitem(last=False)
