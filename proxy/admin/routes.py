"""The admin API's handlers and its route table, from which the routes and the OpenAPI
document are both made.

Every handler is wrapped by ``_guarded``: ``Authorization: Bearer <token>`` compared with
``Settings.admin_token`` in constant time (or, for a GET, the usage page's session
cookie, see ``ui``), else 401 in Gemini's error shape (the same answer for a missing and
a wrong token, which is never echoed). Handlers parse the body or the query into a
pydantic model (a failure is 400 naming the field), do one short transaction through
``storage``, and answer a pydantic model as JSON. They run beside the
proxy on the same event loop; none of them is on a proxied call's path.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..budgets.model import Budget, BudgetSpec, BudgetStatus, describe_errors
from ..errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from ..server.typedefs import sessionmaker_key, settings_key
from ..storage import accounts, budgets, reports
from ..storage.schema import utcnow
from .models import (
    BudgetList,
    BudgetStatusList,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    RecordList,
    RecordOut,
    RecordsQuery,
    TeamCreate,
    TeamList,
    TeamOut,
    TeamUpdate,
    UsageQuery,
    UsageReport,
    UserCreate,
    UserList,
    UserOut,
    UserQuery,
    UserUpdate,
    UserUpdated,
)
from .ui import add_ui_routes, session_ok

__all__ = [
    "ADMIN_PREFIX",
    "OPERATIONS",
    "Operation",
    "add_admin_routes",
    "json_model",
    "parse_group_by",
    "parse_query",
]

ADMIN_PREFIX = "/admin/v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Operation:
    """One route of the API, as served and as documented."""

    method: str
    path: str  # the same {name} placeholders in aiohttp and OpenAPI
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    # the security scheme of components.securitySchemes in the document
    security: str = "adminToken"


# ---------------------------------------------------------------------- plumbing


def json_model(model: BaseModel, status: int = 200) -> web.Response:
    """A model as the JSON response body (exact decimal strings, ISO times)."""
    return web.Response(
        status=status,
        text=model.model_dump_json(exclude_unset=isinstance(model, UsageReport)),
        content_type="application/json",
    )


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument("The request body is not valid JSON.") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(f"Invalid request: {describe_errors(exc)}") from None


def parse_query(request: web.Request, model: type[M], ignore: tuple[str, ...] = ()) -> M:
    """Query parameters as ``model``; one that ``model`` does not define is refused."""
    values: dict[str, Any] = {}
    for name in request.query:
        if name in ignore:
            continue
        got = request.query.getall(name)
        if len(got) > 1:
            raise InvalidArgument(f"Invalid request: {name}: give it once")
        values[name] = got[0]
    try:
        query = model.model_validate(values)
    except ValidationError as exc:
        raise InvalidArgument(f"Invalid request: {describe_errors(exc)}") from None
    for name in ("since", "until"):
        when = getattr(query, name, None)
        if isinstance(when, datetime) and when.tzinfo is None:
            setattr(query, name, when.replace(tzinfo=UTC))
    return query


def parse_group_by(text: str, allowed: tuple[str, ...], *, labels: bool = False) -> list[str]:
    """Comma-separated group keys; with ``labels``, ``label:NAME`` too (a request label's
    value, as ``gemini-meter usage --group-by label:NAME``)."""
    keys = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    prefix = reports.LABEL_PREFIX

    def known(key: str) -> bool:
        return key in allowed or (labels and key.startswith(prefix) and len(key) > len(prefix))

    unknown = [k for k in keys if not known(k)]
    if unknown:
        raise InvalidArgument(
            f"Invalid request: group_by: cannot group by {', '.join(unknown)}; "
            f"choose from {', '.join(allowed)}" + (f" or {prefix}NAME" if labels else "")
        )
    return keys


def _int_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit():
        raise InvalidArgument("Invalid request: id: must be a whole number")
    return int(text)


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[settings_key].admin_token
        # The usage page's session cookie may read, never write (see ``ui``).
        if request.method == "GET" and session_ok(request):
            return await handler(request)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        # The configured token is checked at start-up; compare_digest on bytes takes the
        # same time whatever prefix of the token a caller got right.
        if (
            token is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(
                presented.strip().encode(), token.get_secret_value().encode()
            )
        ):
            raise Unauthenticated(
                "Admin token missing or not valid: send Authorization: Bearer <admin token>."
            )
        return await handler(request)

    return guarded


# -------------------------------------------------------------------- users, teams


def _user(info: accounts.UserInfo) -> UserOut:
    return UserOut(**asdict(info))


def _team(info: accounts.TeamInfo) -> TeamOut:
    return TeamOut(**asdict(info))


def _key(info: accounts.KeyInfo) -> KeyOut:
    return KeyOut(
        id=info.id,
        label=info.label,
        user=info.user,
        team=info.team,
        created_at=info.created_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        last_used_at=info.last_used_at,
    )


@contextmanager
def _account_errors() -> Iterator[None]:
    """``storage.accounts``' refusals as the API's: 404 for a missing name, 409 for a
    taken one."""
    try:
        yield
    except accounts.NoSuchAccount as exc:
        raise NotFound(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None
    except accounts.NameTaken as exc:
        raise AlreadyExists(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None


async def list_users(request: web.Request) -> web.Response:
    query = parse_query(request, UserQuery)
    async with request.app[sessionmaker_key]() as session:
        users = await accounts.list_users(session, team=query.team)
    return json_model(UserList(users=[_user(u) for u in users]))


async def create_user(request: web.Request) -> web.Response:
    spec = await _body(request, UserCreate)
    with _account_errors():
        async with request.app[sessionmaker_key].begin() as session:
            info = await accounts.create_user(session, spec.name, spec.team)
    return json_model(_user(info), 201)


async def update_user(request: web.Request) -> web.Response:
    spec = await _body(request, UserUpdate)
    name = request.match_info["name"]
    moved = 0
    with _account_errors():
        async with request.app[sessionmaker_key].begin() as session:
            if spec.name is not None:
                await accounts.rename_user(session, name, spec.name)
                name = spec.name
            if "team" in spec.model_fields_set:
                moved = await accounts.move_user(session, name, spec.team)
            info = await accounts.get_user(session, name)
    return json_model(UserUpdated(**asdict(info), keys_moved=moved))


async def list_teams(request: web.Request) -> web.Response:
    async with request.app[sessionmaker_key]() as session:
        teams = await accounts.list_teams(session)
    return json_model(TeamList(teams=[_team(t) for t in teams]))


async def create_team(request: web.Request) -> web.Response:
    spec = await _body(request, TeamCreate)
    with _account_errors():
        async with request.app[sessionmaker_key].begin() as session:
            info = await accounts.create_team(session, spec.name)
    return json_model(_team(info), 201)


async def update_team(request: web.Request) -> web.Response:
    spec = await _body(request, TeamUpdate)
    name = request.match_info["name"]
    with _account_errors():
        async with request.app[sessionmaker_key].begin() as session:
            await accounts.rename_team(session, name, spec.name)
            info = await accounts.get_team(session, spec.name)
    return json_model(_team(info))


# --------------------------------------------------------------------------- keys


async def list_keys(request: web.Request) -> web.Response:
    async with request.app[sessionmaker_key]() as session:
        keys = await accounts.list_keys(session)
    return json_model(KeyList(keys=[_key(k) for k in keys]))


async def create_key(request: web.Request) -> web.Response:
    spec = await _body(request, KeyCreate)
    if spec.expires_at is not None and spec.expires_at <= utcnow():
        raise InvalidArgument("Invalid request: expires_at: must be in the future")
    secret = request.app[settings_key].secret_bytes()
    async with request.app[sessionmaker_key].begin() as session:
        info, key = await accounts.create_key(
            session, secret, spec.user, spec.team, expires_at=spec.expires_at
        )
    return json_model(KeyCreated(info=_key(info), key=key), 201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = _int_id(request)
    async with request.app[sessionmaker_key].begin() as session:
        done = await accounts.revoke_key(session, key_id)
        info = await accounts.get_key(session, key_id)
    if not done or info is None:
        raise NotFound(f"No active key with id {key_id}.")
    return json_model(_key(info))


# ------------------------------------------------------------------------ budgets


async def list_budgets(request: web.Request) -> web.Response:
    async with request.app[sessionmaker_key]() as session:
        rows = await budgets.list_budgets(session)
    return json_model(BudgetList(budgets=[budgets.budget_view(r) for r in rows]))


async def create_budget(request: web.Request) -> web.Response:
    spec = await _body(request, BudgetSpec)
    secret = request.app[settings_key].secret_bytes()
    async with request.app[sessionmaker_key].begin() as session:
        row = await budgets.create_budget(session, secret, spec)
    return json_model(budgets.budget_view(row), 201)


async def get_budget(request: web.Request) -> web.Response:
    budget_id = _int_id(request)
    async with request.app[sessionmaker_key]() as session:
        row = await budgets.get_budget(session, budget_id)
    if row is None:
        raise NotFound(f"No budget with id {budget_id}.")
    return json_model(budgets.budget_view(row))


async def replace_budget(request: web.Request) -> web.Response:
    budget_id = _int_id(request)
    spec = await _body(request, BudgetSpec)
    secret = request.app[settings_key].secret_bytes()
    async with request.app[sessionmaker_key].begin() as session:
        row = await budgets.update_budget(session, secret, budget_id, spec)
    if row is None:
        raise NotFound(f"No budget with id {budget_id}.")
    return json_model(budgets.budget_view(row))


async def delete_budget(request: web.Request) -> web.Response:
    budget_id = _int_id(request)
    async with request.app[sessionmaker_key].begin() as session:
        done = await budgets.delete_budget(session, budget_id)
    if not done:
        raise NotFound(f"No budget with id {budget_id}.")
    return web.Response(status=204)


async def budget_status(request: web.Request) -> web.Response:
    budget_id = _int_id(request)
    async with request.app[sessionmaker_key]() as session:
        row = await budgets.get_budget(session, budget_id)
        if row is None:
            raise NotFound(f"No budget with id {budget_id}.")
        status = await budgets.budget_status(session, row, utcnow())
    return json_model(status)


async def all_budget_status(request: web.Request) -> web.Response:
    now = utcnow()
    async with request.app[sessionmaker_key]() as session:
        statuses = [
            await budgets.budget_status(session, row, now)
            for row in await budgets.list_budgets(session)
        ]
    return json_model(BudgetStatusList(statuses=statuses))


# -------------------------------------------------------------------------- usage


async def usage(request: web.Request) -> web.Response:
    query = parse_query(request, UsageQuery)
    group_by = parse_group_by(query.group_by, reports.GROUP_KEYS, labels=True)
    async with request.app[sessionmaker_key]() as session:
        rows = await reports.usage_report(
            session,
            user=query.user,
            team=query.team,
            model=query.model,
            since=query.since,
            until=query.until,
            group_by=group_by,
        )
    return json_model(UsageReport.of(group_by, rows))


async def records(request: web.Request) -> web.Response:
    query = parse_query(request, RecordsQuery)
    async with request.app[sessionmaker_key]() as session:
        rows = await reports.recent_records(session, query.limit)
    for row in rows:
        row["status"] = row.pop("upstream_status")
    return json_model(RecordList(records=[RecordOut.model_validate(r) for r in rows]))


async def openapi(request: web.Request) -> web.Response:
    from .openapi import openapi_document

    return web.json_response(openapi_document())


P = ADMIN_PREFIX
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", f"{P}/users", list_users, "List users", query=UserQuery,
        response=UserList, errors=(400,),
    ),
    Operation(
        "POST", f"{P}/users", create_user, "Create a user", UserCreate,
        response=UserOut, status=201, errors=(400, 409),
    ),
    Operation(
        "PATCH", f"{P}/users/{{name}}", update_user, "Rename a user or move it to another team",
        UserUpdate, response=UserUpdated, errors=(400, 404, 409),
    ),
    Operation("GET", f"{P}/teams", list_teams, "List teams", response=TeamList),
    Operation(
        "POST", f"{P}/teams", create_team, "Create a team", TeamCreate,
        response=TeamOut, status=201, errors=(400, 409),
    ),
    Operation(
        "PATCH", f"{P}/teams/{{name}}", update_team, "Rename a team", TeamUpdate,
        response=TeamOut, errors=(400, 404, 409),
    ),
    Operation("GET", f"{P}/keys", list_keys, "List keys (never the keys)", response=KeyList),
    Operation(
        "POST", f"{P}/keys", create_key, "Issue a virtual key; the key is in this response only",
        KeyCreate, response=KeyCreated, status=201, errors=(400,),
    ),
    Operation(
        "DELETE", f"{P}/keys/{{id}}", revoke_key, "Revoke a virtual key",
        response=KeyOut, errors=(400, 404),
    ),
    Operation("GET", f"{P}/budgets", list_budgets, "List budgets", response=BudgetList),
    Operation(
        "POST", f"{P}/budgets", create_budget, "Create a budget", BudgetSpec,
        response=Budget, status=201, errors=(400,),
    ),
    # Before /budgets/{id}: routes match in the order they were added.
    Operation(
        "GET", f"{P}/budgets/status", all_budget_status,
        "Every budget's spend in its current window", response=BudgetStatusList,
    ),
    Operation(
        "GET", f"{P}/budgets/{{id}}", get_budget, "Read a budget",
        response=Budget, errors=(400, 404),
    ),
    Operation(
        "PUT", f"{P}/budgets/{{id}}", replace_budget,
        "Replace a budget's settings (a webhook left out is removed)", BudgetSpec,
        response=Budget, errors=(400, 404),
    ),
    Operation(
        "DELETE", f"{P}/budgets/{{id}}", delete_budget, "Delete a budget",
        status=204, errors=(400, 404),
    ),
    Operation(
        "GET", f"{P}/budgets/{{id}}/status", budget_status,
        "A budget's spend in its current window", response=BudgetStatus, errors=(400, 404),
    ),
    Operation(
        "GET", f"{P}/usage", usage, "Usage and cost report, grouped like `gemini-meter usage`",
        query=UsageQuery, response=UsageReport, errors=(400,),
    ),
    Operation(
        "GET", f"{P}/records", records, "The most recent usage records, newest first",
        query=RecordsQuery, response=RecordList, errors=(400,),
    ),
    Operation("GET", f"{P}/openapi.json", openapi, "This OpenAPI document"),
)  # fmt: skip


def add_admin_routes(app: web.Application) -> None:
    """Add every admin route to ``app``, each behind the admin token, and the usage page."""
    for op in OPERATIONS:
        app.router.add_route(op.method, op.path, _guarded(op.handler))
    add_ui_routes(app)
