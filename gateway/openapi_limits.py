"""OpenAPI of ``/v1/limits``, and the answers every operation may give whatever its handler does.

Every operation but the public ones may answer 401 (and 403, when it has a
caller); every operation with inputs may answer 400 ``invalid_request``; every operation
may be refused with a 429 (rate limit or quota, with ``Retry-After``); every
operation with a body may be refused with a 413; and every operation but the
ones with their own deadline may time out with a 504.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .hardening import has_own_deadline
from .identity.rbac import PUBLIC, TENANT_PUBLIC
from .limits import LimitsOut
from .openapi_parts import error, json_response

MODELS: list[type[BaseModel]] = [LimitsOut]

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/limits", "get"): {
        "summary": "The caller's tenant's rate limits and quotas (null: unlimited) and its usage against them",
        "responses": {"200": json_response(LimitsOut, "limits and usage")},
    },
}

_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "seconds"}}
_LIMITED = {
    **error(
        "a rate limit or quota refuses the call; retry after Retry-After seconds", "rate_limited", "quota_exceeded"
    ),
    "headers": _RETRY_AFTER,
}
_UNAUTHENTICATED = error("no valid credential (or a bad signed URL)", "unauthenticated", "invalid_signature")
_FORBIDDEN = error("the caller's role or scopes do not allow this", "forbidden")
_INVALID = error("a parameter or the body is not valid", "invalid_request")
_TOO_LARGE = error("the request body is over the gateway's limit", "payload_too_large")
_TIMEOUT = error("no response within the gateway's request deadline", "request_timeout")
_UNLIMITED = frozenset({"/healthz", "/readyz"})


def add_common_responses(paths: dict[str, dict[str, Any]]) -> None:
    """Add the middleware's answers to every operation of ``paths`` that does not document them itself."""
    for path, item in paths.items():
        for method, op in item.items():
            responses: dict[str, Any] = dict(op.get("responses", {}))
            item[method] = {**op, "responses": responses}  # a copy: the operations tables stay as written
            if path not in PUBLIC:
                responses.setdefault("401", _UNAUTHENTICATED)
                if path not in TENANT_PUBLIC:
                    responses.setdefault("403", _FORBIDDEN)
            if op.get("parameters") or "requestBody" in op:
                responses.setdefault("400", _INVALID)
            if path not in _UNLIMITED:
                responses.setdefault("429", _LIMITED)
            if "requestBody" in op:
                responses.setdefault("413", _TOO_LARGE)
            if not has_own_deadline(path):
                responses.setdefault("504", _TIMEOUT)
