"""Settings: one typed class read from flags, ``GEMINI_METER_*`` and TOML.

Precedence, highest first: values the CLI passes in (its flags), environment
variables with the ``GEMINI_METER_`` prefix (names in any case), the TOML file named
by ``GEMINI_METER_CONFIG`` (or ``--config``), then the defaults below. Each value is
converted to its field's type (a string from the environment as a number, a flag,
an enum member or, for a map, JSON), checked against its bounds, then against the
checks below, which refuse unsafe values at start-up rather than at the first
request. Every problem found is reported at once (``SettingsError``); no message
repeats a value that could be a secret.

The class is plain Python rather than pydantic-settings, which it replaced with the
same fields, sources and checks: ``serve`` imports it on its way to ready, and
pydantic with pydantic-settings took about 85 ms of a 0.58 s start
(docs/benchmarks.md, "Start to ready"). The admin API's models still use pydantic;
``serve`` loads them only with the first admin request.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .loopback import is_loopback

__all__ = [
    "AuthMode",
    "EventLoop",
    "InteractionSharing",
    "JournalFullPolicy",
    "MetricsPrincipal",
    "Problem",
    "RedisFailure",
    "Secret",
    "Settings",
    "SettingsError",
    "load_settings",
]

ENV_PREFIX: Final = "GEMINI_METER_"
DEFAULT_UPSTREAM = "https://generativelanguage.googleapis.com"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./gemini-meter.db"
# A guessable admin token would hand out every key and budget.
ADMIN_TOKEN_MIN_LENGTH = 16


class Secret:
    """A setting that must not be shown: its repr and str are masked, and
    ``get_secret_value()`` is the one way to read it (pydantic's ``SecretStr`` API)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)

    def __getstate__(self) -> str:
        return self._value

    def __setstate__(self, state: str) -> None:
        self._value = state


@dataclass(frozen=True)
class Range:
    """Bounds of a number field: at least ``ge``, more than ``gt``, at most ``le``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def problem(self, value: float | Decimal) -> str | None:
        if self.ge is not None and value < self.ge:
            return f"must be at least {self.ge:g}"
        if self.gt is not None and value <= self.gt:
            return f"must be greater than {self.gt:g}"
        if self.le is not None and value > self.le:
            return f"must be at most {self.le:g}"
        return None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings: its field (None for a rule across fields) and
    why; ``unknown`` marks a name that is no setting at all."""

    field: str | None
    message: str
    unknown: bool = False

    def __str__(self) -> str:
        return self.message if self.field is None else f"{self.field}: {self.message}"


class SettingsError(ValueError):
    """The settings cannot be used; ``problems`` lists each reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


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


class EventLoop(StrEnum):
    """The event loop ``serve`` runs on."""

    AUTO = "auto"  # uvloop where it is installed (a dependency on Linux and macOS), else asyncio's
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class Settings:
    """Everything the proxy, the CLI and the writer are configured by."""

    host: str = "127.0.0.1"
    port: Annotated[int, Range(ge=0, le=65535)] = 8080
    # Processes serving the port together (SO_REUSEPORT), each with its own event loop,
    # writer and journal slot; a supervisor restarts one that dies. With more than one,
    # worker i serves /metrics on metrics_port + i (required then: a shared port would
    # answer with whichever worker the kernel picked).
    workers: Annotated[int, Range(ge=1, le=64)] = 1
    # uvloop spends less CPU per call than asyncio's own loop (docs/benchmarks.md).
    event_loop: EventLoop = EventLoop.AUTO
    upstream: str = DEFAULT_UPSTREAM
    upstream_api_key: Secret | None = None
    database_url: str = DEFAULT_DATABASE_URL

    auth_mode: AuthMode = AuthMode.VIRTUAL_KEYS
    # HMAC secret for key hashes and fingerprints. Unset on the embedded SQLite
    # default, one is generated and kept in ``key_secret_file``.
    key_secret: Secret | None = None
    key_secret_file: Path = Path("./gemini-meter.secret")
    # Passthrough mode: key fingerprint (as ``gemini-meter`` prints it) -> user name.
    passthrough_aliases: dict[str, str] = {}
    key_cache_ttl_seconds: Annotated[float, Range(ge=0)] = 30.0
    interaction_sharing: InteractionSharing = InteractionSharing.OWNER

    max_request_bytes: Annotated[int, Range(gt=0)] = 100 * 1024 * 1024
    upstream_connect_timeout_seconds: Annotated[float, Range(gt=0)] = 10.0
    # Between two reads of the upstream response; a long generation streams, so
    # this bounds silence, not the whole call.
    upstream_read_timeout_seconds: Annotated[float, Range(gt=0)] = 600.0
    upstream_pool_size: Annotated[int, Range(gt=0)] = 256
    # How long a new interaction's owner row (or an upload session) may take to
    # commit before the id is released: past it, an owner falls back to the
    # batching writer (and this process's memory), an upload start gets 503.
    owner_commit_timeout_seconds: Annotated[float, Range(gt=0)] = 5.0
    # Resumable uploads: how long an upload id started through the proxy stays
    # usable by the keyless byte legs, how many of those legs may be in flight at
    # once (fewer than upstream_pool_size, so they cannot starve keyed calls), and
    # how long one may go without sending a byte of its body.
    upload_session_ttl_seconds: Annotated[float, Range(gt=0)] = 24 * 3600.0
    keyless_upload_limit: Annotated[int, Range(gt=0)] = 32
    keyless_upload_idle_timeout_seconds: Annotated[float, Range(gt=0)] = 30.0

    writer_batch_size: Annotated[int, Range(gt=0)] = 500
    # Short, so that a batch's CPU comes in short bursts: at 0.2 s, a batch of a busy
    # c=1 client's records held a core for ~20 ms and showed in the calls' p99
    # (docs/benchmarks.md, "The writer's flush interval").
    writer_flush_interval_seconds: Annotated[float, Range(gt=0)] = 0.05
    writer_queue_limit: Annotated[int, Range(gt=0)] = 100_000

    # The durable journal (storage.journal): every finished record is written to it at
    # once and fsync'd before the writer takes it, replayed on start, trimmed once committed.
    journal_enabled: bool = True
    # Unset: next to the SQLite file for the embedded default, else ./gemini-meter-journal.
    # Each process takes the first free slot (an exclusive lock) beneath it.
    journal_dir: Path | None = None
    journal_max_bytes: Annotated[int, Range(gt=0)] = 256 * 1024 * 1024
    journal_segment_bytes: Annotated[int, Range(gt=0)] = 8 * 1024 * 1024
    journal_full_policy: JournalFullPolicy = JournalFullPolicy.REFUSE
    # A group commit's fsync comes this long after the first record it covers (records
    # are written at once; only a machine crash could lose those not yet fsync'd).
    journal_sync_interval_ms: Annotated[float, Range(ge=0, le=1000)] = 5.0
    # One line per request (method, path, status, time; never the query): off saves its
    # formatting on every call where a load balancer or the metrics already say enough.
    access_log: bool = True
    # SIGTERM: stop accepting, let calls and streams in flight finish this long.
    shutdown_grace_seconds: Annotated[float, Range(ge=0)] = 30.0
    # A Live API session (server.live) is recorded when it ends; while it runs, a
    # provisional record of its usage so far is written at most this often.
    live_provisional_interval_seconds: Annotated[float, Range(ge=0)] = 60.0
    # A client that vanishes mid-turn: how long the relay reads on for that turn's usage
    # (the upstream bills the turn either way) before it closes the upstream session.
    live_drain_seconds: Annotated[float, Range(ge=0)] = 10.0

    # Budget alerts (budgets.alerts), evaluated from the database off the request path:
    # every alert_interval_seconds (sooner once new records are written), delivered to
    # the budget's webhook with this timeout, retried with backoff capped at
    # alert_retry_max_seconds for as long as it takes.
    alerts_enabled: bool = True
    alert_interval_seconds: Annotated[float, Range(gt=0)] = 10.0
    alert_webhook_timeout_seconds: Annotated[float, Range(gt=0)] = 10.0
    alert_retry_max_seconds: Annotated[float, Range(gt=0)] = 300.0

    price_catalog: Path | None = None

    # Prometheus /metrics (server.metrics, docs/metrics.md). Unset port: served on the
    # proxy's own port; set, only on this one (same host), off the proxy port.
    metrics_port: Annotated[int | None, Range(ge=0, le=65535)] = None
    # The per-principal label, and how many distinct values it takes before the rest
    # are counted as "other" (series grow with it: docs/metrics.md has the bound).
    metrics_principal: MetricsPrincipal = MetricsPrincipal.TEAM
    metrics_principal_limit: Annotated[int, Range(gt=0)] = 100
    # Optional OTLP/HTTP export of the GenAI client metrics (server.otel; needs the
    # ``otel`` extra): the collector's base URL, e.g. http://127.0.0.1:4318.
    otlp_endpoint: str | None = None
    otlp_interval_seconds: Annotated[float, Range(gt=0)] = 60.0

    # The admin HTTP API (/admin/v1/) is served only when this is set; clients send it
    # as "Authorization: Bearer <token>". At least 16 characters.
    admin_token: Secret | None = None

    # Budgets (proxy.budgets, docs/budgets.md). Budgets and their spend are reloaded
    # from the database this often: admission never waits on it.
    budget_refresh_seconds: Annotated[float, Range(gt=0)] = 5.0
    # The zone of a budget stored without one.
    budget_timezone: str = "UTC"
    # Reserved per call on top of its estimate, for what cannot be estimated (code
    # execution's intermediate tokens, thinking, grounding fees).
    budget_reserve_usd: Annotated[Decimal, Range(ge=0)] = Decimal("0.01")
    budget_reserve_tokens: Annotated[int, Range(ge=0)] = 4096
    # The output a call is assumed to produce when it does not cap it.
    budget_default_output_tokens: Annotated[int, Range(ge=0)] = 8192
    # Shared counters for several processes, e.g. redis://127.0.0.1:6379/0; unset, each
    # process counts in memory over a view of the database.
    redis_url: Secret | None = None
    redis_prefix: str = "gemini-meter:"
    redis_timeout_seconds: Annotated[float, Range(gt=0)] = 0.5
    budget_redis_failure: RedisFailure = RedisFailure.OPEN

    def __init__(self, **values: Any) -> None:
        """Settings from the TOML file and the environment, with ``values`` on top
        (a ``TypeError`` names one that is no setting, as a function call would)."""
        _known(values)
        from_file, problems = _from_file()
        self._set({**from_file, **_from_environment(), **values}, problems)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, checked as any other value is."""
        _known(changes)
        copy = object.__new__(Settings)
        copy._set({**vars(self), **changes}, [])
        return copy

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name; ``GEMINI_METER_`` and the name in capitals is its
        environment variable, and the class attribute of that name its default."""
        return tuple(_FIELDS)

    def _set(self, values: Mapping[str, object], problems: list[Problem]) -> None:
        for field in _FIELDS.values():
            raw = values.get(field.name, field.default)
            try:
                value = field.convert(raw)
            except ValueError as exc:
                problems.append(Problem(field.name, str(exc)))
            else:
                setattr(self, field.name, value)
        if problems:
            raise SettingsError(problems)
        for check in _RULES:
            try:
                check(self)
            except ValueError as exc:
                raise SettingsError([Problem(None, str(exc))]) from None

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Settings({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

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


# ------------------------------------------------------------------------- the sources


def _known(values: Mapping[str, object]) -> None:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise TypeError(f"Settings got unknown settings {', '.join(map(repr, unknown))}")


def _from_environment() -> dict[str, str]:
    """``GEMINI_METER_<NAME>`` for each setting, the name in any case; other variables
    with the prefix (``GEMINI_METER_CONFIG``, ``_LOG_LEVEL``) are not settings."""
    found: dict[str, str] = {}
    for variable, value in os.environ.items():
        upper = variable.upper()
        if upper.startswith(ENV_PREFIX):
            name = upper.removeprefix(ENV_PREFIX).lower()
            if name in _FIELDS:
                found[name] = value
    return found


def _from_file() -> tuple[dict[str, object], list[Problem]]:
    """The TOML file named by ``GEMINI_METER_CONFIG``: its settings, and a problem for
    each key that is none (``tomllib.TOMLDecodeError`` if it is not TOML)."""
    name = os.environ.get("GEMINI_METER_CONFIG")
    if not name:
        return {}, []
    try:
        with open(name, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        problem = f"GEMINI_METER_CONFIG: cannot read {name!r} ({exc.strerror})"
        return {}, [Problem(None, problem)]
    problems = [
        Problem(key, "is not a setting", unknown=True) for key in table if key not in _FIELDS
    ]
    return {k: v for k, v in table.items() if k in _FIELDS}, problems


# ------------------------------------------------------------------------- conversion

_TRUE: Final = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE: Final = frozenset({"0", "off", "f", "false", "n", "no"})


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    raise ValueError("must be true or false")


def _to_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("must be a whole number")


def _to_float(value: object) -> float:
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _to_decimal(value: object) -> Decimal:
    number = Decimal("NaN")
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = Decimal(str(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            pass
    elif isinstance(value, Decimal):
        number = value
    if not number.is_finite():
        raise ValueError("must be a finite decimal number")
    return number


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _to_path(value: object) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ValueError("must be a path")
    return Path(value)


def _to_secret(value: object) -> Secret:
    if isinstance(value, Secret):
        return value
    return Secret(_to_str(value))


def _to_map(value: object) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("must be a JSON object of strings") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("must be a map of strings to strings")
    return dict(value)  # a copy: never the class's default, nor the caller's map


def _to_member(kind: type[StrEnum]) -> Callable[[object], StrEnum]:
    choices = ", ".join(repr(member.value) for member in kind)

    def convert(value: object) -> StrEnum:
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        raise ValueError(f"must be one of {choices}")

    return convert


_CONVERTERS: Final[dict[object, Callable[[object], object]]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    Decimal: _to_decimal,
    str: _to_str,
    Path: _to_path,
    Secret: _to_secret,
}


@dataclass(frozen=True)
class _Field:
    name: str
    default: object
    kind: Callable[[object], object]
    optional: bool
    bounds: Range | None
    check: Callable[[Any], object] | None

    def convert(self, value: object) -> object:
        if value is None:
            if self.optional:
                return None
            raise ValueError("must be set")
        converted = self.kind(value)
        if self.bounds is not None:
            assert isinstance(converted, int | float | Decimal)
            if (problem := self.bounds.problem(converted)) is not None:
                raise ValueError(problem)
        if self.check is not None:
            converted = self.check(converted)
        return converted


def _fields(
    cls: type, checks: Mapping[str, Callable[[Any], object]]
) -> Iterator[tuple[str, _Field]]:
    for name, hint in get_type_hints(cls, include_extras=True).items():
        bounds = None
        if get_origin(hint) is Annotated:
            hint, bounds = get_args(hint)
        optional = get_origin(hint) in (Union, UnionType) and type(None) in get_args(hint)
        if optional:
            (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
        if get_origin(hint) is dict:
            kind: Callable[[object], object] = _to_map
        elif isinstance(hint, type) and issubclass(hint, StrEnum):
            kind = _to_member(hint)
        else:
            kind = _CONVERTERS[hint]
        yield name, _Field(name, getattr(cls, name), kind, optional, bounds, checks.get(name))


# ------------------------------------------------------------------------- checks
# Each takes a field's converted value (never None) and returns it, or raises
# ValueError with the reason; a rule takes the whole settings.


def _upstream_is_safe(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("must use https unless it is a loopback address")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry credentials, a query or a fragment")
    return value.rstrip("/")


def _otlp_is_a_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    return value


def _database_is_async(value: str) -> str:
    if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://...")
    path = value.removeprefix("sqlite+aiosqlite:///").partition("?")[0]
    if value.startswith("sqlite") and path and path != ":memory:":
        # SQLite creates the file but not its directory; say so now, not at the
        # first write.
        if not Path(path).parent.is_dir():
            raise ValueError(f"no directory {str(Path(path).parent)!r} for the SQLite file")
    return value


def _zone_exists(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


def _redis_url(value: Secret) -> Secret:
    if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be redis://, rediss:// or unix://")
    return value


def _not_blank(value: Secret) -> Secret:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


def _admin_token_is_strong(value: Secret) -> Secret:
    token = value.get_secret_value()
    if not token.strip():
        raise ValueError("must not be empty (unset it to turn the admin API off)")
    if len(token) < ADMIN_TOKEN_MIN_LENGTH:
        raise ValueError(f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters long")
    return value


def _production_needs_a_secret(settings: Settings) -> None:
    if settings.key_secret is None and not settings.is_sqlite:
        raise ValueError(
            "GEMINI_METER_KEY_SECRET is required with a shared database: "
            "every proxy process must hash keys alike"
        )


def _metrics_port_is_its_own(settings: Settings) -> None:
    if settings.metrics_port is not None and settings.metrics_port == settings.port != 0:
        raise ValueError(
            "metrics_port (GEMINI_METER_METRICS_PORT) must differ from port: unset it "
            "to serve /metrics on the proxy's port"
        )


def _workers_have_their_metrics_ports(settings: Settings) -> None:
    if settings.workers == 1:
        return
    if settings.metrics_port is None:
        raise ValueError(
            "workers > 1 needs metrics_port (GEMINI_METER_METRICS_PORT): worker i serves "
            "/metrics on metrics_port + i, since on the shared proxy port a scrape would "
            "reach whichever worker the kernel picked"
        )
    if settings.port == 0:
        raise ValueError("workers > 1 needs a fixed port (not 0) for them to share")
    ports = range(settings.metrics_port, settings.metrics_port + settings.workers)
    if settings.port in ports or ports[-1] > 65535:
        raise ValueError(
            f"the workers' metrics ports {ports[0]}..{ports[-1]} must be valid and not "
            "include the proxy's port"
        )


def _keyless_uploads_leave_room(settings: Settings) -> None:
    if settings.keyless_upload_limit >= settings.upstream_pool_size:
        raise ValueError(
            "keyless_upload_limit (GEMINI_METER_KEYLESS_UPLOAD_LIMIT) must be smaller than "
            "upstream_pool_size (GEMINI_METER_UPSTREAM_POOL_SIZE), or keyless upload legs "
            "could take every upstream connection"
        )


_RULES: Final = (
    _production_needs_a_secret,
    _metrics_port_is_its_own,
    _workers_have_their_metrics_ports,
    _keyless_uploads_leave_room,
)
_FIELDS: Final = dict(
    _fields(
        Settings,
        {
            "upstream": _upstream_is_safe,
            "otlp_endpoint": _otlp_is_a_url,
            "database_url": _database_is_async,
            "budget_timezone": _zone_exists,
            "redis_url": _redis_url,
            "key_secret": _not_blank,
            "upstream_api_key": _not_blank,
            "admin_token": _admin_token_is_strong,
        },
    )
)
