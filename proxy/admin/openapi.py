"""The OpenAPI 3.1 document of the admin API and the self-service endpoints.

Built from the route tables that also register the routes (``routes.OPERATIONS``,
``meter.meter_operations``), so a route cannot be served undocumented; the schemas are
the pydantic models' own (``models_json_schema``): request bodies and query parameters in
validation mode, responses in serialization mode (money as decimal strings).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .. import __version__
from .meter import meter_operations
from .models import ErrorResponse
from .routes import OPERATIONS, Operation
from .ui import SESSION_COOKIE

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_REASONS = {
    200: "OK",
    201: "Created",
    204: "Deleted",
    400: "Invalid request (the message names the field)",
    401: "Missing or wrong credentials",
    404: "No such resource",
    409: "The name is taken",
}


def _operations() -> tuple[Operation, ...]:
    return (*OPERATIONS, *meter_operations())


def _error(code: int) -> dict[str, Any]:
    return {
        "description": _REASONS[code],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
    }


def _parameters(op: Operation, refs: dict[Any, Any], defs: dict[str, Any]) -> list[Any]:
    params: list[dict[str, Any]] = []
    for name in re.findall(r"{(\w+)}", op.path):
        schema = {"type": "integer", "minimum": 1} if name == "id" else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        ref = refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[-1]
        model_schema = defs[ref]
        required = set(model_schema.get("required", ()))
        for name, schema in model_schema["properties"].items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {k: v for k, v in schema.items() if k != "description"},
            }
            if "description" in schema:
                param["description"] = schema["description"]
            params.append(param)
    return params


def _operation(op: Operation, refs: dict[Any, Any], defs: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if op.response is not None:
        responses[str(op.status)] = {
            "description": _REASONS[op.status],
            "content": {"application/json": {"schema": refs[(op.response, "serialization")]}},
        }
    elif op.path.endswith("/openapi.json"):
        responses[str(op.status)] = {
            "description": "The OpenAPI 3.1 document",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    else:
        responses[str(op.status)] = {"description": _REASONS[op.status]}
    for code in sorted({*op.errors, 401}):
        responses[str(code)] = _error(code)
    security: list[dict[str, list[str]]] = [{op.security: []}]
    if op.security == "adminToken" and op.method == "GET":
        # The usage page's session reads what the admin token reads (``ui``).
        security.append({"uiSession": []})
    out: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "security": security,
        "responses": responses,
    }
    params = _parameters(op, refs, defs)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    return out


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document; the same for every app (it depends on no setting)."""
    ops = _operations()
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for op in ops:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.query is not None:
            wanted.append((op.query, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
    wanted = list(dict.fromkeys(wanted))
    refs, schema = models_json_schema(wanted, ref_template=_REF)
    defs: dict[str, Any] = schema.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs, defs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Gemini Meter admin API",
            "version": __version__,
            "description": "Users, teams, keys, budgets and usage reports under /admin/v1 "
            "(admin token), and self-service usage and budget status under /meter/v1 "
            "(a virtual key). Errors use Gemini's shape {error: {code, message, status}}.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "GEMINI_METER_ADMIN_TOKEN",
                },
                "uiSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "the usage page's session (GET only): POST the admin "
                    "token to /ui/login as the form field token",
                },
                "virtualKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-goog-api-key",
                    "description": "a Gemini Meter virtual key (also ?key= or a Bearer token)",
                },
            },
        },
    }
