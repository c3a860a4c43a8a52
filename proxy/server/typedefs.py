"""Typed application keys: every piece of state an app carries, in one place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    from ..budgets.alerts import AlertDelivery, AlertEvaluator
    from ..budgets.engine import BudgetEngine
    from ..metering.recorder import Recorder
    from ..pricing.catalog import Catalog
    from ..settings import Settings
    from ..storage.journal import Journal
    from ..storage.writer import UsageWriter
    from .auth import Authenticator
    from .batches import BatchMeter
    from .client import Client
    from .metrics import Metrics


class BodyReader(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class ApiRequest(Protocol):
    """What the API's handler reads of a request: aiohttp's ``web.Request``, or the lean
    lane's ``front.FrontRequest``."""

    @property
    def app(self) -> web.Application: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def query(self) -> MultiMapping[str]: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def content_type(self) -> str: ...
    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def content(self) -> BodyReader: ...
    async def read(self) -> bytes: ...


settings_key: web.AppKey[Settings] = web.AppKey("settings")
engine_key: web.AppKey[AsyncEngine] = web.AppKey("engine")
sessionmaker_key: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessionmaker")
# The forwarded calls' client, and aiohttp's for the Live API's websockets.
upstream_client_key: web.AppKey[Client] = web.AppKey("upstream_client")
upstream_session_key: web.AppKey[aiohttp.ClientSession] = web.AppKey("upstream_session")
metrics_key: web.AppKey[Metrics] = web.AppKey("metrics")
catalog_key: web.AppKey[Catalog] = web.AppKey("catalog")
writer_key: web.AppKey[UsageWriter] = web.AppKey("writer")
authenticator_key: web.AppKey[Authenticator] = web.AppKey("authenticator")
recorder_key: web.AppKey[Recorder] = web.AppKey("recorder")
# what this process recorded of batch results (server.batches)
batch_meter_key: web.AppKey[BatchMeter] = web.AppKey("batch_meter")
# streams still being relayed (or drained for billing after their client left)
pumps_key: web.AppKey[set[asyncio.Task[web.StreamResponse]]] = web.AppKey("pumps")
# Live API relays in flight (server.live); also in ``pumps_key``, but cut at shutdown
# before aiohttp waits for handlers, since a WebSocket never ends by itself
live_sessions_key: web.AppKey[set[asyncio.Task[web.StreamResponse]]] = web.AppKey("live_sessions")
# keyless resumable-upload legs in flight (``Settings.keyless_upload_limit``)
keyless_uploads_key: web.AppKey[asyncio.Semaphore] = web.AppKey("keyless_uploads")
# the durable journal, None when disabled by the settings
journal_key: web.AppKey[Journal | None] = web.AppKey("journal")
# budgets, their counters, admission and settlement (proxy.budgets)
budgets_key: web.AppKey[BudgetEngine] = web.AppKey("budgets")


@dataclass(slots=True)
class InFlight:
    """How many calls the app is handling right now (for a graceful shutdown)."""

    value: int = 0


in_flight_key: web.AppKey[InFlight] = web.AppKey("in_flight")

# budget alerts' background tasks, absent when GEMINI_METER_ALERTS_ENABLED is false
alert_evaluator_key: web.AppKey[AlertEvaluator] = web.AppKey("alert_evaluator")
alert_delivery_key: web.AppKey[AlertDelivery] = web.AppKey("alert_delivery")
