"""Building blocks of OpenAPI operations shared by the ``openapi_*`` modules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from soulbox.core.schemas import NAME_PATTERN

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
BINARY = {"type": "string", "format": "binary"}


def ref(model: type[BaseModel]) -> dict[str, Any]:
    """A reference to ``model``'s schema in the document's components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_response(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    """A response whose JSON body is ``model``."""
    return {"description": description, "content": {"application/json": {"schema": ref(model)}}, **extra}


def json_body(model: type[BaseModel], *, limit: str | None = None) -> dict[str, Any]:
    """A required JSON request body validated as ``model`` (``limit``: its size limit, said in words)."""
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": ref(model)}}}
    if limit:
        body["description"] = f"at most {limit}"
    return body


def error(description: str, *codes: str) -> dict[str, Any]:
    """An error response (``ErrorResponse``); ``codes`` are the ``error.code`` values it can carry."""
    if codes:
        description = f"{description} (code: {', '.join(f'`{c}`' for c in codes)})"
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def overloaded() -> dict[str, Any]:
    """The 429 of a full invocation queue, with its Retry-After header."""
    return {
        **error("the invocation queue is full; retry after Retry-After seconds", "overloaded"),
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "seconds"}},
    }


def path_param(name: str, pattern: str = NAME_PATTERN, description: str | None = None) -> dict[str, Any]:
    """A required path parameter matching ``pattern``."""
    param: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": pattern},
    }
    if description:
        param["description"] = description
    return param
