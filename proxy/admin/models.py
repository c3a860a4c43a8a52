"""The admin API's and the self-service endpoints' requests and responses, as pydantic models.

Budgets reuse ``budgets.model`` (``BudgetSpec`` in, ``Budget`` and ``BudgetStatus`` out).
Every response is an object (lists are wrapped, so fields can be added later); money is
an exact decimal string; times are ISO 8601 in UTC. ``openapi`` builds the published
document from these very classes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..budgets.model import Budget, BudgetStatus, DecimalString

__all__ = [
    "BudgetList",
    "BudgetStatusList",
    "ErrorBody",
    "ErrorResponse",
    "KeyCreate",
    "KeyCreated",
    "KeyList",
    "KeyOut",
    "MeterUsageQuery",
    "NoQuery",
    "RecordList",
    "RecordOut",
    "RecordsQuery",
    "TeamCreate",
    "TeamList",
    "TeamOut",
    "TeamUpdate",
    "UsageQuery",
    "UsageReport",
    "UsageReportRow",
    "UserCreate",
    "UserList",
    "UserOut",
    "UserQuery",
    "UserUpdate",
    "UserUpdated",
]

_NAME = Field(min_length=1, max_length=200, pattern=r"^[^/\s][^/]*$")


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError("give a time zone, e.g. 2026-12-31T00:00:00Z")
    return value


class ErrorBody(BaseModel):
    code: int
    message: str
    status: str


class ErrorResponse(BaseModel):
    """Gemini's error shape, which every refusal uses."""

    error: ErrorBody


# ------------------------------------------------------------------- users, teams


class UserOut(BaseModel):
    id: int
    name: str
    team: str | None = Field(description="the user's home team")
    created_at: datetime
    active_keys: int = Field(description="keys neither revoked nor expired")


class UserUpdated(UserOut):
    """A user after ``PATCH``: with how many keys moved to its new home team."""

    keys_moved: int = Field(
        description="the user's active keys that billed to its old home team and moved "
        "with it (a key made for another team stays); 0 when the team did not change"
    )


class UserQuery(_Input):
    """Filter of ``GET /admin/v1/users``."""

    team: str | None = Field(default=None, description="only the users whose home team this is")


class UserList(BaseModel):
    users: list[UserOut]


class UserCreate(_Input):
    name: str = _NAME
    team: str | None = Field(default=None, description="home team, made if it does not exist")


class UserUpdate(_Input):
    """Rename and/or move: a field left out is kept; ``"team": null`` leaves every team.

    A move takes along the user's active keys that billed to its old home team; a
    rename takes along the budgets whose scope names the user.
    """

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^/\s][^/]*$")
    team: str | None = Field(default=None, description="new home team, which must exist")


class TeamOut(BaseModel):
    id: int
    name: str
    users: int = Field(description="users whose home team this is")
    created_at: datetime


class TeamList(BaseModel):
    teams: list[TeamOut]


class TeamCreate(_Input):
    name: str = _NAME


class TeamUpdate(_Input):
    name: str = _NAME


# --------------------------------------------------------------------------- keys


class KeyOut(BaseModel):
    """A virtual key as listed: its display label, never the key."""

    id: int
    label: str
    user: str
    team: str | None = Field(description="the team calls with this key are billed to")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="coarse: updated at most once a minute")


class KeyList(BaseModel):
    keys: list[KeyOut]


class KeyCreate(_Input):
    user: str = _NAME
    team: str | None = Field(default=None, description="bill calls to this team")
    expires_at: datetime | None = Field(default=None, description="the key stops working then")

    _expiry_aware = field_validator("expires_at")(_aware)


class KeyCreated(BaseModel):
    """A new key: ``key`` is shown in this response only, and never stored."""

    info: KeyOut
    key: str


# ------------------------------------------------------------------------ budgets


class BudgetList(BaseModel):
    budgets: list[Budget]


class BudgetStatusList(BaseModel):
    statuses: list[BudgetStatus]


# -------------------------------------------------------------------------- usage


class UsageQuery(_Input):
    """Filters and grouping of ``GET /admin/v1/usage``, as query parameters."""

    user: str | None = None
    team: str | None = None
    model: str | None = None
    since: datetime | None = Field(default=None, description="inclusive; UTC if no zone given")
    until: datetime | None = Field(default=None, description="exclusive; UTC if no zone given")
    group_by: str = Field(
        default="user",
        description="comma-separated group keys: user, team, key, model, endpoint, day, "
        "label:NAME (a request label's value); empty for the total",
    )


class NoQuery(_Input):
    """An endpoint that takes no query parameters (besides a ``key``)."""


class MeterUsageQuery(_Input):
    """``GET /meter/v1/usage``: the caller's own usage only, so no user or team filter."""

    since: datetime | None = Field(default=None, description="inclusive; UTC if no zone given")
    until: datetime | None = Field(default=None, description="exclusive; UTC if no zone given")
    group_by: str = Field(
        default="", description="comma-separated: model, day; empty (the default) for the total"
    )


class UsageReportRow(BaseModel):
    """One group of a usage report: its group keys (only those asked for), then totals."""

    model_config = ConfigDict(extra="allow")

    user: str | None = None
    team: str | None = None
    model: str | None = None
    day: str | None = Field(default=None, description="UTC date, YYYY-MM-DD")
    requests: int
    input_tokens: int
    cached_tokens: int
    intermediate_tokens: int
    output_tokens: int
    thinking_tokens: int
    total_tokens: int
    cost_usd: DecimalString | None = Field(description="null when every record was unpriced")
    cost_input_usd: DecimalString | None
    cost_cached_usd: DecimalString | None
    cost_intermediate_usd: DecimalString | None
    cost_output_usd: DecimalString | None
    cost_thinking_usd: DecimalString | None
    cost_grounding_usd: DecimalString | None
    unpriced_requests: int


class UsageReport(BaseModel):
    group_by: list[str]
    rows: list[UsageReportRow]

    @classmethod
    def of(cls, group_by: list[str], rows: list[dict[str, Any]]) -> UsageReport:
        return cls(group_by=group_by, rows=[UsageReportRow(**r) for r in rows])


# ------------------------------------------------------------------------ records


class RecordsQuery(_Input):
    """``GET /admin/v1/records``: how many of the most recent records."""

    limit: int = Field(default=50, ge=1, le=1000, description="at most this many, newest first")


class RecordOut(BaseModel):
    """One stored usage record, as the usage page's list of recent calls shows it."""

    id: int
    created_at: datetime
    user: str
    team: str | None = Field(description="the team the call was billed to")
    model: str | None
    endpoint: str = Field(description="the route's name, e.g. generate_content")
    streamed: bool
    status: int = Field(description="the upstream's HTTP status")
    provisional: bool = Field(description="partial usage of an interaction not yet finished")
    code_execution_calls: int
    input_tokens: int
    cached_tokens: int
    intermediate_tokens: int
    output_tokens: int
    thinking_tokens: int
    total_tokens: int
    cost_usd: DecimalString | None = Field(description="null when the model was unpriced")


class RecordList(BaseModel):
    records: list[RecordOut]
