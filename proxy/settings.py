"""Settings: one pydantic-settings class read from flags, ``GEMINI_METER_*`` and TOML.

Precedence, highest first: values the CLI passes in (its flags), environment
variables with the ``GEMINI_METER_`` prefix, the TOML file named by
``GEMINI_METER_CONFIG`` (or ``--config``), then the defaults below. Validators
refuse unsafe values at start-up rather than at the first request.
"""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .loopback import is_loopback

DEFAULT_UPSTREAM = "https://generativelanguage.googleapis.com"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./gemini-meter.db"
# A guessable admin token would hand out every key and budget.
ADMIN_TOKEN_MIN_LENGTH = 16


class AuthMode(StrEnum):
    VIRTUAL_KEYS = "virtual_keys"
    PASSTHROUGH = "passthrough"


class JournalFullPolicy(StrEnum):
    """What the proxy does when its journal reaches ``journal_max_bytes``."""

    DROP = "drop"  # keep serving; records that do not fit are dropped and counted
    REFUSE = "refuse"  # refuse new billable calls with 503 until the journal drains


class RedisFailure(StrEnum):
    """What admission does when Redis (the shared budget counters) does not answer."""

    OPEN = "open"  # this process's own view of spend decides alone (logged, counted)
    CLOSED = "closed"  # calls under an enforced budget get 503 until Redis answers


class MetricsPrincipal(StrEnum):
    """What the ``principal`` label of the per-call metrics carries."""

    NONE = "none"  # always "": the fewest series
    TEAM = "team"  # the team's name ("" for a user without one)
    USER = "user"  # the user's name


class InteractionSharing(StrEnum):
    OWNER = "owner"
    TEAM = "team"


class Settings(BaseSettings):
    """Everything the proxy, the CLI and the writer are configured by."""

    model_config = SettingsConfigDict(
        env_prefix="GEMINI_METER_",
        extra="forbid",
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Processes serving the port together (SO_REUSEPORT), each with its own event loop,
    # writer and journal slot; a supervisor restarts one that dies. With more than one,
    # worker i serves /metrics on metrics_port + i (required then: a shared port would
    # answer with whichever worker the kernel picked).
    workers: int = Field(default=1, ge=1, le=64)
    upstream: str = DEFAULT_UPSTREAM
    upstream_api_key: SecretStr | None = None
    database_url: str = DEFAULT_DATABASE_URL

    auth_mode: AuthMode = AuthMode.VIRTUAL_KEYS
    # HMAC secret for key hashes and fingerprints. Unset on the embedded SQLite
    # default, one is generated and kept in ``key_secret_file``.
    key_secret: SecretStr | None = None
    key_secret_file: Path = Path("./gemini-meter.secret")
    # Passthrough mode: key fingerprint (as ``gemini-meter`` prints it) -> user name.
    passthrough_aliases: dict[str, str] = Field(default_factory=dict)
    key_cache_ttl_seconds: float = Field(default=30.0, ge=0)
    interaction_sharing: InteractionSharing = InteractionSharing.OWNER

    max_request_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    upstream_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    # Between two reads of the upstream response; a long generation streams, so
    # this bounds silence, not the whole call.
    upstream_read_timeout_seconds: float = Field(default=600.0, gt=0)
    upstream_pool_size: int = Field(default=256, gt=0)
    # How long a new interaction's owner row (or an upload session) may take to
    # commit before the id is released: past it, an owner falls back to the
    # batching writer (and this process's memory), an upload start gets 503.
    owner_commit_timeout_seconds: float = Field(default=5.0, gt=0)
    # Resumable uploads: how long an upload id started through the proxy stays
    # usable by the keyless byte legs, how many of those legs may be in flight at
    # once (fewer than upstream_pool_size, so they cannot starve keyed calls), and
    # how long one may go without sending a byte of its body.
    upload_session_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    keyless_upload_limit: int = Field(default=32, gt=0)
    keyless_upload_idle_timeout_seconds: float = Field(default=30.0, gt=0)

    writer_batch_size: int = Field(default=500, gt=0)
    writer_flush_interval_seconds: float = Field(default=0.2, gt=0)
    writer_queue_limit: int = Field(default=100_000, gt=0)

    # The durable journal (storage.journal): every finished record is written to it at
    # once and fsync'd before the writer takes it, replayed on start, trimmed once committed.
    journal_enabled: bool = True
    # Unset: next to the SQLite file for the embedded default, else ./gemini-meter-journal.
    # Each process takes the first free slot (an exclusive lock) beneath it.
    journal_dir: Path | None = None
    journal_max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    journal_segment_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    journal_full_policy: JournalFullPolicy = JournalFullPolicy.REFUSE
    # A group commit's fsync comes this long after the first record it covers (records
    # are written at once; only a machine crash could lose those not yet fsync'd).
    journal_sync_interval_ms: float = Field(default=5.0, ge=0, le=1000)
    # One line per request (method, path, status, time; never the query): off saves its
    # formatting on every call where a load balancer or the metrics already say enough.
    access_log: bool = True
    # SIGTERM: stop accepting, let calls and streams in flight finish this long.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # A Live API session (server.live) is recorded when it ends; while it runs, a
    # provisional record of its usage so far is written at most this often.
    live_provisional_interval_seconds: float = Field(default=60.0, ge=0)
    # A client that vanishes mid-turn: how long the relay reads on for that turn's usage
    # (the upstream bills the turn either way) before it closes the upstream session.
    live_drain_seconds: float = Field(default=10.0, ge=0)

    # Budget alerts (budgets.alerts), evaluated from the database off the request path:
    # every alert_interval_seconds (sooner once new records are written), delivered to
    # the budget's webhook with this timeout, retried with backoff capped at
    # alert_retry_max_seconds for as long as it takes.
    alerts_enabled: bool = True
    alert_interval_seconds: float = Field(default=10.0, gt=0)
    alert_webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    alert_retry_max_seconds: float = Field(default=300.0, gt=0)

    price_catalog: Path | None = None

    # Prometheus /metrics (server.metrics, docs/metrics.md). Unset port: served on the
    # proxy's own port; set, only on this one (same host), off the proxy port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # The per-principal label, and how many distinct values it takes before the rest
    # are counted as "other" (series grow with it: docs/metrics.md has the bound).
    metrics_principal: MetricsPrincipal = MetricsPrincipal.TEAM
    metrics_principal_limit: int = Field(default=100, gt=0)
    # Optional OTLP/HTTP export of the GenAI client metrics (server.otel; needs the
    # ``otel`` extra): the collector's base URL, e.g. http://127.0.0.1:4318.
    otlp_endpoint: str | None = None
    otlp_interval_seconds: float = Field(default=60.0, gt=0)

    # The admin HTTP API (/admin/v1/) is served only when this is set; clients send it
    # as "Authorization: Bearer <token>". At least 16 characters.
    admin_token: SecretStr | None = None

    # Budgets (proxy.budgets, docs/budgets.md). Budgets and their spend are reloaded
    # from the database this often: admission never waits on it.
    budget_refresh_seconds: float = Field(default=5.0, gt=0)
    # The zone of a budget stored without one.
    budget_timezone: str = "UTC"
    # Reserved per call on top of its estimate, for what cannot be estimated (code
    # execution's intermediate tokens, thinking, grounding fees).
    budget_reserve_usd: Decimal = Field(default=Decimal("0.01"), ge=0)
    budget_reserve_tokens: int = Field(default=4096, ge=0)
    # The output a call is assumed to produce when it does not cap it.
    budget_default_output_tokens: int = Field(default=8192, ge=0)
    # Shared counters for several processes, e.g. redis://127.0.0.1:6379/0; unset, each
    # process counts in memory over a view of the database.
    redis_url: SecretStr | None = None
    redis_prefix: str = "gemini-meter:"
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    budget_redis_failure: RedisFailure = RedisFailure.OPEN

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get("GEMINI_METER_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    @field_validator("upstream")
    @classmethod
    def _upstream_is_safe(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError("must use https unless it is a loopback address")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_is_a_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_is_async(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://...")
        path = value.removeprefix("sqlite+aiosqlite:///").partition("?")[0]
        if value.startswith("sqlite") and path and path != ":memory:":
            # SQLite creates the file but not its directory; say so now, not at the
            # first write.
            if not Path(path).parent.is_dir():
                raise ValueError(f"no directory {str(Path(path).parent)!r} for the SQLite file")
        return value

    @field_validator("budget_timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("redis_url must be redis://, rediss:// or unix://")
        return value

    @field_validator("key_secret", "upstream_api_key")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if not token.strip():
            raise ValueError("must not be empty (unset it to turn the admin API off)")
        if len(token) < ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters long")
        return value

    @model_validator(mode="after")
    def _production_needs_a_secret(self) -> Settings:
        if self.key_secret is None and not self.is_sqlite:
            raise ValueError(
                "GEMINI_METER_KEY_SECRET is required with a shared database: "
                "every proxy process must hash keys alike"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> Settings:
        if self.metrics_port is not None and self.metrics_port == self.port != 0:
            raise ValueError(
                "metrics_port (GEMINI_METER_METRICS_PORT) must differ from port: unset it "
                "to serve /metrics on the proxy's port"
            )
        return self

    @model_validator(mode="after")
    def _workers_have_their_metrics_ports(self) -> Settings:
        if self.workers == 1:
            return self
        if self.metrics_port is None:
            raise ValueError(
                "workers > 1 needs metrics_port (GEMINI_METER_METRICS_PORT): worker i serves "
                "/metrics on metrics_port + i, since on the shared proxy port a scrape would "
                "reach whichever worker the kernel picked"
            )
        if self.port == 0:
            raise ValueError("workers > 1 needs a fixed port (not 0) for them to share")
        ports = range(self.metrics_port, self.metrics_port + self.workers)
        if self.port in ports or ports[-1] > 65535:
            raise ValueError(
                f"the workers' metrics ports {ports[0]}..{ports[-1]} must be valid and not "
                "include the proxy's port"
            )
        return self

    @model_validator(mode="after")
    def _keyless_uploads_leave_room(self) -> Settings:
        if self.keyless_upload_limit >= self.upstream_pool_size:
            raise ValueError(
                "keyless_upload_limit (GEMINI_METER_KEYLESS_UPLOAD_LIMIT) must be smaller than "
                "upstream_pool_size (GEMINI_METER_UPSTREAM_POOL_SIZE), or keyless upload legs "
                "could take every upstream connection"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def journal_path(self) -> Path:
        """The journal directory: the setting, or beside the embedded SQLite file."""
        if self.journal_dir is not None:
            return self.journal_dir
        path = self.database_url.removeprefix("sqlite+aiosqlite:///").partition("?")[0]
        if self.is_sqlite and path and path != ":memory:":
            return Path(path + ".journal")
        return Path("./gemini-meter-journal")

    def secret_bytes(self) -> bytes:
        """The HMAC secret; on the embedded default, made once and kept in a 0600 file."""
        if self.key_secret is not None:
            return self.key_secret.get_secret_value().encode()
        path = self.key_secret_file
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and TOML file, with CLI flags (not None) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
