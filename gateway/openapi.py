"""The OpenAPI 3.1 document of the HTTP API, built from the route table and the models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from soulbox.core.ledger import AuditRecord
from soulbox.core.schemas import NAME_PATTERN
from soulbox.events import UsageReport

from . import openapi_admin, openapi_identity, openapi_limits, openapi_logs, openapi_secrets, openapi_triggers
from .models import ErrorResponse, FunctionList, FunctionOut, InvocationAccepted, InvocationOut
from .platform import INVOCATION_ID_RE
from .sandboxes import api as sandbox_api

_MODELS: list[type[BaseModel]] = [
    ErrorResponse,
    FunctionOut,
    FunctionList,
    InvocationOut,
    InvocationAccepted,
    UsageReport,
    AuditRecord,
    *sandbox_api.MODELS,
    *openapi_triggers.MODELS,
    *openapi_admin.MODELS,
    *openapi_secrets.MODELS,
    *openapi_logs.MODELS,
    *openapi_identity.MODELS,
    *openapi_limits.MODELS,
]


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ErrorResponse, description)


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN}}

_DEPLOY_FORM = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": NAME_PATTERN},
                    "runtime": {
                        "type": "string",
                        "default": "wasi",
                        "description": "`js`/`ts` (or none with a .js/.ts/.mjs/.tsx file): Bun or Deno, detected",
                    },
                    "package_json": {
                        "type": "string",
                        "description": "package.json text: picks Bun (`js`/`ts`); its `dependencies` are "
                        "installed and bundled into the artifact at deploy (bun/deno)",
                    },
                    "deno_json": {"type": "string", "description": "with `js`/`ts`: deno.json text"},
                    "bunfig_toml": {"type": "string", "description": "with `js`/`ts`: bunfig.toml text"},
                    "code": {"type": "string", "format": "binary", "description": "the function's file"},
                    "module": {"type": "string", "format": "binary", "description": "alias of `code`"},
                    "memory_mb": {"type": "integer", "minimum": 1},
                    "timeout_ms": {"type": "integer", "minimum": 1},
                    "max_output_bytes": {"type": "integer", "minimum": 0},
                    "secrets": {
                        "type": "string",
                        "description": 'JSON {"ENV_VAR": "secret-name"}: secrets put into the environment at run time',
                    },
                    "fuel": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Wasmtime tier: CPU budget in fuel units; out of it, error kind out_of_fuel",
                    },
                    "handler": {
                        "type": "string",
                        "enum": ["stdio", "http"],
                        "default": "stdio",
                        "description": "Wasmtime tier: `http` = JSON request on stdin, JSON response on stdout",
                    },
                },
            }
        }
    },
}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/healthz", "get"): {"summary": "Liveness", "responses": {"200": {"description": "alive"}}},
    ("/readyz", "get"): {
        "summary": "Readiness (connected to NATS)",
        "responses": {"200": {"description": "ready"}, "503": _error("not ready")},
    },
    ("/v1/functions", "post"): {
        "summary": "Deploy or redeploy a function",
        "requestBody": _DEPLOY_FORM,
        "responses": {
            "201": _json(FunctionOut, "created"),
            "200": _json(FunctionOut, "redeployed"),
            "400": _error("invalid name, limits or module"),
            "413": _error("module too large"),
        },
    },
    ("/v1/functions", "get"): {"summary": "List functions", "responses": {"200": _json(FunctionList, "functions")}},
    ("/v1/functions/{name}", "get"): {
        "summary": "Get a function",
        "parameters": [_NAME],
        "responses": {"200": _json(FunctionOut, "the function"), "404": _error("no such function")},
    },
    ("/v1/functions/{name}", "delete"): {
        "summary": "Delete a function",
        "parameters": [_NAME],
        "responses": {"204": {"description": "deleted"}, "404": _error("no such function")},
    },
    ("/v1/functions/{name}/invoke", "post"): {
        "summary": "Invoke a function: the body is its stdin",
        "parameters": [
            _NAME,
            {"name": "async", "in": "query", "schema": {"type": "boolean"}, "description": "return 202 at once"},
            {
                "name": "X-Invocation-Id",
                "in": "header",
                "schema": {"type": "string", "pattern": INVOCATION_ID_RE.pattern},
                "description": "caller-chosen id; a repeat runs nothing and returns the first result",
            },
            {"name": "Prefer", "in": "header", "schema": {"type": "string"}, "description": "respond-async"},
            *openapi_logs.STREAM_PARAMETERS,
        ],
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "200": {
                "description": "the function's stdout",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    **openapi_logs.STREAM_CONTENT,
                },
            },
            "202": _json(InvocationAccepted, "accepted (async)"),
            "404": _error("no such function"),
            "413": _error("body too large"),
            "429": _error("queue full; retry after Retry-After seconds"),
            "502": _error("the function failed (trap, non-zero exit, out of memory)"),
            "504": _error("the function timed out"),
        },
    },
    ("/v1/invocations/{invocation_id}", "get"): {
        "summary": "Get an invocation's record",
        "parameters": [{"name": "invocation_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(InvocationOut, "the record"), "404": _error("no such invocation")},
    },
    ("/v1/usage", "get"): {
        "summary": "Billed usage of the tenant: totals, per function, per hour or day",
        "parameters": [
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "function", "in": "query", "schema": {"type": "string"}},
            {"name": "granularity", "in": "query", "schema": {"enum": ["hour", "day", "none"]}},
        ],
        "responses": {"200": _json(UsageReport, "the usage report"), "400": _error("bad parameters")},
    },
    ("/v1/audit", "get"): {
        "summary": "The tenant's audit log, oldest first, paged by record position",
        "parameters": [
            {
                "name": "after",
                "in": "query",
                "description": "a record's `position` (or a page's `next`): the page starts after it",
                "schema": {"type": "integer", "minimum": 0},
            },
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        ],
        "responses": {
            "200": {
                "description": "a page of records; pass `next` as `after` for the following page",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "records": {"type": "array", "items": _ref(AuditRecord)},
                                "next": {"type": "integer"},
                            },
                        }
                    }
                },
            },
            "400": _error("bad parameters"),
        },
    },
}


def openapi_document(
    routes: Sequence[BaseRoute], extra: dict[tuple[str, str], dict[str, Any]] | None = None
) -> dict[str, Any]:
    operations = {
        **OPERATIONS,
        **sandbox_api.OPERATIONS,
        **openapi_triggers.OPERATIONS,
        **openapi_admin.OPERATIONS,
        **openapi_secrets.OPERATIONS,
        **openapi_logs.OPERATIONS,
        **openapi_identity.OPERATIONS,
        **openapi_limits.OPERATIONS,
        **(extra or {}),
    }
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted(route.methods or ()):
            op = operations.get((route.path, method.lower()))
            if op is not None:
                paths.setdefault(route.path, {})[method.lower()] = op
    openapi_limits.add_common_responses(paths)
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "SoulBox", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
