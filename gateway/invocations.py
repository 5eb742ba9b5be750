"""Invoking functions and reading invocation records."""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core.errors import (
    FunctionFailed,
    InvalidRequest,
    InvocationNotFound,
    InvocationTimeout,
    SchemaError,
)
from soulbox.core.schemas import FunctionSpec, InvocationRecord, Runtime, Status
from soulbox.core.store import get_model
from soulbox.runtimes.js.http import HttpResponse

from . import logs
from .bodies import read_body
from .functions import function_name
from .models import InvocationAccepted, InvocationOut
from .platform import INVOCATION_ID_RE, Platform, Submission, platform
from .principal import principal
from .streaming import StreamMode, stream_mode, streamed_response
from .versions import resolve


def _wants_async(request: Request) -> bool:
    flag = request.query_params.get("async", "").lower()
    return flag in ("1", "true", "yes") or "respond-async" in request.headers.get("prefer", "")


async def invoke(request: Request) -> Response:
    """Run a function: the body is its stdin; sync returns its stdout (streamed if asked), async a 202 with the id."""
    p = platform(request)
    spec = await resolve(p, request, function_name(request))
    body = await read_body(request, p.settings.gateway.max_body_bytes)
    wait = not _wants_async(request)
    stream = stream_mode(request, wait=wait)
    invocation_id = request.headers.get("x-invocation-id")
    key = request.headers.get("idempotency-key")
    if invocation_id is None and key is not None:
        invocation_id = idempotent_id(spec, key)
    submission = await p.submit(
        spec,
        body,
        invocation_id=invocation_id,
        wait=wait,
        trace_id=request.headers.get("x-trace-id"),
        callback_url=_callback_url(request, wait=wait),
    )
    invocation_id = submission.request.id
    structlog.contextvars.bind_contextvars(invocation_id=invocation_id)
    if not wait:
        response = accepted_response(request, invocation_id)
    else:
        response = await finished_response(p, spec, submission, stream)
    if submission.duplicate:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _callback_url(request: Request, *, wait: bool) -> str | None:
    """``X-Callback-Url``: where the finished record is POSTed; asynchronous invocations only."""
    url = request.headers.get("x-callback-url")
    if url is None:
        return None
    if wait:
        raise InvalidRequest("X-Callback-Url needs an asynchronous invocation (?async=1)")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or len(url) > 2048:
        raise InvalidRequest("X-Callback-Url must be an absolute http(s) URL of at most 2048 characters")
    return url


def idempotent_id(spec: FunctionSpec, key: str) -> str:
    """The invocation id an ``Idempotency-Key`` stands for: repeats map to the first invocation.

    Per tenant and function, for as long as the first invocation's record is
    kept (``invocation_ttl_s``), like a repeated ``X-Invocation-Id``.
    """
    if not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters")
    digest = hashlib.sha256(f"{spec.tenant}\n{spec.name}\n{key}".encode()).hexdigest()
    return f"ik{digest[:46]}"


def accepted_response(request: Request, invocation_id: str) -> Response:
    """202 with the invocation's id and where to poll it."""
    url = str(request.url_for("get_invocation", invocation_id=invocation_id).path)
    accepted = InvocationAccepted(id=invocation_id, status=Status.ACCEPTED.value, url=url)
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": url})


async def finished_response(
    p: Platform, spec: FunctionSpec, submission: Submission, stream: StreamMode | None = None
) -> Response:
    """Wait for a synchronous submission's record and answer with the function's result.

    ``stream``: answer with the output as it is produced instead (:mod:`.streaming`)."""
    if stream is not None:
        return await streamed_response(p, spec, submission, stream, lambda: finished_response(p, spec, submission))
    invocation_id = submission.request.id
    timeout = spec.limits.timeout_ms / 1000 + p.settings.gateway.sync_grace_s
    record: InvocationRecord | None = None
    if submission.result is None:  # a repeated id: follow the first submission's record
        record = await p.waiter.watch_until_finished(invocation_id, timeout)
    else:
        try:
            record = p.waiter.record(await asyncio.wait_for(submission.result, timeout))
        except TimeoutError:
            p.waiter.discard(invocation_id)
    if record is None:
        raise InvocationTimeout(invocation_id, spec.limits.timeout_ms)
    if spec.runtime in HTTP_RUNTIMES and record.status is Status.COMPLETED:
        return handler_response(record)
    return result_response(record)


# Runtimes whose Workers-style handlers answer with an HTTP response envelope.
HTTP_RUNTIMES = frozenset({Runtime.BUN, Runtime.DENO})
_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})


def handler_response(record: InvocationRecord) -> Response:
    """A fetch handler's own status, headers and body; a script's output as it is."""
    try:
        answer = HttpResponse.decode(record.stdout)
    except SchemaError:
        return result_response(record)  # script mode: stdout is the body
    response = Response(answer.body, status_code=answer.status)
    for key, value in answer.headers:
        if key.lower() not in _HOP_BY_HOP:
            response.headers.append(key, value)
    response.headers["X-Invocation-Id"] = record.id
    response.headers["X-Duration-Ms"] = f"{record.duration_ms or 0:.3f}"
    return response


def result_response(record: InvocationRecord) -> Response:
    headers = {
        "X-Invocation-Id": record.id,
        "X-Duration-Ms": f"{record.duration_ms or 0:.3f}",
    }
    if record.status is Status.COMPLETED:
        headers["X-Exit-Code"] = str(record.exit_code or 0)
        if record.stdout_truncated:
            headers["X-Stdout-Truncated"] = "true"
        return Response(record.stdout, status_code=200, headers=headers, media_type="application/octet-stream")
    if record.status is Status.TIMED_OUT:
        raise InvocationTimeout(record.id, record.timeout_ms or 0)
    error = record.error
    code = record.outcome.value if record.outcome else "function_error"
    raise FunctionFailed(record.id, code, error.message if error else "the function failed")


async def get_invocation(request: Request) -> Response:
    p = platform(request)
    invocation_id: str = request.path_params["invocation_id"]
    if not INVOCATION_ID_RE.match(invocation_id):
        raise InvocationNotFound(invocation_id)
    record = await get_model(p.buckets.invocations, invocation_id, InvocationRecord)
    if record is None or record.tenant != principal(request).tenant:
        raise InvocationNotFound(invocation_id)
    return JSONResponse(InvocationOut.of(record).model_dump(mode="json"))


get_invocation_logs = logs.get_invocation_logs  # routed beside get_invocation (app.py)
