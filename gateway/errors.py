"""Errors become JSON responses here, and only here.

Every error response is ``{"error": {"code": ..., "message": ...}}`` with a
stable code; unexpected exceptions become a 500 ``internal`` without details.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core import errors
from soulbox.core.logging import get_logger

from .models import ErrorBody, ErrorResponse

log = get_logger(__name__)

_STATUS: list[tuple[type[errors.SoulboxError], int]] = [
    (errors.PayloadTooLarge, 413),
    (errors.InvalidRequest, 400),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Overloaded, 429),
    (errors.InvocationTimeout, 504),
    (errors.FunctionFailed, 502),
    (errors.Unavailable, 503),
    (errors.SchemaError, 500),
]

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    invocation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, invocation_id=invocation_id))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def status_of(exc: errors.SoulboxError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


async def soulbox_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.SoulboxError)
    status = status_of(exc)
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, errors.Overloaded) else None
    invocation_id = getattr(exc, "invocation_id", None)
    if status >= 500:
        log.warning("request.error", code=exc.code, error=exc.message)
    return error_response(status, exc.code, exc.message, invocation_id=invocation_id, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("request.crashed", error=repr(exc), exc_info=exc)
    return error_response(500, "internal", "internal error")


EXCEPTION_HANDLERS = {
    errors.SoulboxError: soulbox_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
