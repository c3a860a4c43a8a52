"""The one place a finished call is handed on: priced, counted, queued for storage.

``Recorder.finish`` is called by the proxy handler once per billable upstream
response. It never awaits: pricing is a pure function, metrics are in-memory
counters, and the writer's ``submit`` only queues. Budgets (reconciling the
estimate reserved at admission) and the durable journal join here later.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from ..pricing import Catalog, price
from ..server.metrics import Metrics
from ..storage.writer import UsageWriter
from .records import Principal, UsageRecord

log = logging.getLogger("gemini_meter.recorder")

_SEEN_LIMIT = 100_000


class Recorder:
    def __init__(self, catalog: Catalog, writer: UsageWriter, metrics: Metrics) -> None:
        self._catalog = catalog
        self._writer = writer
        self._metrics = metrics
        # Interactions this process already billed: spares the writer a conflicting
        # insert on every poll. The database's unique constraint is the guarantee.
        self._billed: OrderedDict[str, None] = OrderedDict()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def own(self, interaction_id: str, principal: Principal, model: str | None) -> None:
        """Remember who created an interaction, for ownership checks in any process."""
        self._writer.submit_owner(interaction_id, principal, model)

    def finish(self, record: UsageRecord) -> None:
        iid = record.interaction_id
        if iid is not None:
            if iid in self._billed:
                return
            self._billed[iid] = None
            if len(self._billed) > _SEEN_LIMIT:
                self._billed.popitem(last=False)
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
        self._metrics.observe(record)
        self._writer.submit(record)
