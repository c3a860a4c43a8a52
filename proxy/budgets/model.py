"""What a budget is, as input and as output: pydantic models, validation only, no I/O.

``BudgetSpec`` is everything an operator sets on a budget; the CLI (``budgets set``), the
admin API (``POST``/``PUT /admin/v1/budgets``) and ``storage.budgets`` all take it, so a
budget is validated the same way whichever door it comes through. ``Budget`` is a stored
budget as shown (never the webhook URL, only whether one is set) and ``BudgetStatus`` its
spend in the current window. Money is an exact decimal string on the wire, never a JSON
float; the thresholds are stored as decimal strings (``"0.5"``, ``"0.8"``, ``"1"``).

A budget's ``category`` narrows what it counts: for a token budget one token category
(``input``, ``cached``, ``intermediate``, ``output``, ``thinking``), for a USD budget one
cost category (the same five plus ``grounding``). Without a category a token budget counts
``total_tokens`` (input + intermediate + output + thinking; cached tokens are part of
input) and a USD budget the whole cost.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..loopback import is_loopback
from .windows import Window

__all__ = [
    "COST_CATEGORIES",
    "DEFAULT_THRESHOLDS",
    "TOKEN_CATEGORIES",
    "Budget",
    "BudgetMode",
    "BudgetSpec",
    "BudgetStatus",
    "DecimalString",
    "Scope",
    "WebhookFormat",
    "describe_errors",
    "threshold_text",
]

TOKEN_CATEGORIES = ("input", "cached", "intermediate", "output", "thinking")
COST_CATEGORIES = (*TOKEN_CATEGORIES, "grounding")
DEFAULT_THRESHOLDS = (Decimal("0.5"), Decimal("0.8"), Decimal("1"))
SCOPE_KINDS = ("user", "team", "key", "global")


class BudgetMode(StrEnum):
    ALERT = "alert"  # notify only
    ENFORCE = "enforce"  # refuse billable calls once the limit is reached


class WebhookFormat(StrEnum):
    JSON = "json"  # the alert as a JSON object
    SLACK = "slack"  # a Slack-compatible {"text": ...} payload


def _exact(value: Any) -> Any:
    # A JSON float is a binary fraction: money and fractions arrive as strings (or ints).
    if isinstance(value, float):
        raise ValueError('give an exact decimal as a string, e.g. "12.50", not a JSON number')
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a decimal number") from exc
        if not parsed.is_finite():
            raise ValueError("must be a finite number")
        return parsed
    return value


def _plain(value: Decimal) -> str:
    # Normalised, so one amount reads the same from either database ("1.3", not
    # "1.300000000000" from PostgreSQL's NUMERIC(28, 12)).
    return format(value.normalize(), "f")


# An exact decimal: read from a string (or an int), written as a plain decimal string.
DecimalString = Annotated[
    Decimal,
    BeforeValidator(_exact),
    PlainSerializer(_plain, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "examples": ["12.50"]}),
]


def threshold_text(value: Decimal) -> str:
    """A threshold as stored: the shortest plain decimal ("0.5", "1")."""
    text = format(value.normalize(), "f")
    return text


class Scope(BaseModel):
    """A parsed scope: ``user:NAME``, ``team:NAME``, ``key:ID`` or ``global``."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["user", "team", "key", "global"]
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``ValueError`` with a reason for anything but the four spellings."""
        text = text.strip()
        if text == "global":
            return cls(kind="global")
        kind, sep, name = text.partition(":")
        if not sep or kind not in ("user", "team", "key") or not name.strip():
            raise ValueError("scope must be user:NAME, team:NAME, key:ID or global")
        name = name.strip()
        if kind == "key" and not (name.isdigit() and int(name) > 0):
            raise ValueError("a key scope is key:ID with the key's numeric id")
        if kind == "key":
            name = str(int(name))
        return cls(kind=kind, name=name)

    def __str__(self) -> str:
        return "global" if self.kind == "global" else f"{self.kind}:{self.name}"


class BudgetSpec(BaseModel):
    """A budget as an operator sets it (create, or replace by id)."""

    model_config = ConfigDict(extra="forbid")

    scope: str = Field(
        description="user:NAME, team:NAME, key:ID or global", examples=["team:research"]
    )
    limit_usd: DecimalString | None = Field(
        default=None, description="limit in US dollars (> 0); exactly one of the two limits"
    )
    limit_tokens: int | None = Field(
        default=None, description="limit in tokens (> 0); exactly one of the two limits"
    )
    category: str | None = Field(
        default=None,
        description="count one category only: a token category for limit_tokens "
        f"({', '.join(TOKEN_CATEGORIES)}), a cost category for limit_usd (also grounding)",
    )
    window: Window = Field(description="daily, weekly or monthly (calendar), or total")
    timezone: str = Field(default="UTC", description="IANA time zone the calendar is read in")
    thresholds: list[DecimalString] = Field(
        default_factory=lambda: list(DEFAULT_THRESHOLDS),
        description="alert at these fractions of the limit: ascending, each in (0, 1]",
    )
    mode: BudgetMode = Field(description="alert (notify only) or enforce (refuse at the limit)")
    webhook: str | None = Field(
        default=None,
        description="where alerts are posted: https, or http to a loopback address; "
        "stored sealed and never shown again",
    )
    webhook_format: WebhookFormat = WebhookFormat.JSON

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return str(Scope.parse(value))

    @field_validator("limit_usd")
    @classmethod
    def _usd(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("limit_tokens", mode="before")
    @classmethod
    def _tokens_int(cls, value: Any) -> Any:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError("must be a whole number of tokens")
        return value

    @field_validator("limit_tokens")
    @classmethod
    def _tokens(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from exc
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[Decimal]) -> list[Decimal]:
        if not value:
            raise ValueError("give at least one threshold")
        for t in value:
            if not 0 < t <= 1:
                raise ValueError("each threshold is a fraction of the limit in (0, 1]")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError("thresholds must be strictly ascending")
        return [t.normalize() for t in value]

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Never the value itself in the message: the URL may be a credential.
            raise ValueError("must be an http(s) URL with a host")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError("must use https unless it is a loopback address")
        return value.strip()

    @model_validator(mode="after")
    def _one_limit(self) -> BudgetSpec:
        if (self.limit_usd is None) == (self.limit_tokens is None):
            raise ValueError("set exactly one of limit_usd and limit_tokens")
        if self.category is not None:
            allowed = TOKEN_CATEGORIES if self.limit_tokens is not None else COST_CATEGORIES
            if self.category not in allowed:
                unit = "token" if self.limit_tokens is not None else "cost"
                raise ValueError(
                    f"category of a {unit} budget is one of {', '.join(allowed)}, "
                    f"not {self.category!r}"
                )
        return self

    @property
    def parsed_scope(self) -> Scope:
        return Scope.parse(self.scope)


class Budget(BaseModel):
    """A stored budget as shown: the webhook URL never, only whether one is set."""

    id: int
    scope: str
    limit_usd: DecimalString | None
    limit_tokens: int | None
    category: str | None
    window: Window
    timezone: str
    thresholds: list[DecimalString]
    mode: BudgetMode
    webhook_configured: bool
    webhook_format: WebhookFormat
    created_at: datetime
    updated_at: datetime


class BudgetStatus(BaseModel):
    """A budget's spend in its current window, against its limit."""

    budget: Budget
    unit: Literal["usd", "tokens"]
    window_start: datetime = Field(description="start of the current window (UTC)")
    resets_at: datetime | None = Field(description="end of the current window; null for total")
    spend: DecimalString = Field(description="USD or tokens spent in the window")
    limit: DecimalString
    remaining: DecimalString = Field(description="limit - spend, never below 0")
    ratio: DecimalString = Field(description="spend / limit, rounded down to 6 digits")
    thresholds_reached: list[DecimalString]
    exceeded: bool = Field(description="spend has reached the limit")


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line naming each field, for a 400 or the CLI."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{prefix}{where}: {message}" if where else f"{prefix}{message}".strip())
    return "; ".join(parts)
