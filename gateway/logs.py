"""``GET /v1/invocations/{id}/logs``: an invocation's stdout and stderr as it was produced.

The entries come from the ``SB_LOGS`` stream (:mod:`soulbox.core.outputlog`),
so any gateway serves them, during the run and after it (for
``logs.max_age_s``). Without ``follow`` the answer is one JSON document of the
entries stored now; with ``?follow=true`` it is NDJSON, one entry per line as
it is produced, ending after the entry of type ``end`` that finishes the
invocation (``status`` other than ``retrying``), or after ``logs.follow_max_s``.
``?after=<cursor>`` skips what was already read. Tenant-scoped: an invocation
of another tenant is a 404.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from soulbox.core.errors import InvalidRequest, InvocationNotFound
from soulbox.core.outputlog import OutputEntry, StoredEntry, has_output, read_output, until
from soulbox.core.schemas import InvocationRecord, Status
from soulbox.core.store import get_model

from .platform import INVOCATION_ID_RE, platform
from .principal import principal

NDJSON = "application/x-ndjson"


class EntryError(BaseModel):
    code: str = Field(description="the stable error code the non-streamed API answers with")
    message: str


class InvocationLogEntry(BaseModel):
    """One piece of output (``type`` = ``output``) or the end of an attempt (``type`` = ``end``)."""

    cursor: int = Field(description="position in the log; pass as `after` to read what follows")
    seq: int = Field(description="order within the attempt, from 1")
    attempt: int
    timestamp: datetime
    type: Literal["output", "end"]
    stream: Literal["stdout", "stderr"] | None = None
    data: str | None = Field(None, description="the bytes as UTF-8, or base64 when `encoding` says so")
    encoding: Literal["base64"] | None = Field(None, description="set when the bytes are not valid UTF-8")
    status: Status | None = Field(None, description="end: the attempt's status (`retrying`: another follows)")
    outcome: str | None = None
    exit_code: int | None = None
    error: EntryError | None = None
    duration_ms: float | None = None
    stdout_bytes: int | None = Field(None, description="end: bytes written, kept or not")
    stderr_bytes: int | None = None
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None


class InvocationLogsOut(BaseModel):
    invocation_id: str
    entries: list[InvocationLogEntry]
    finished: bool = Field(description="the invocation has ended (its last entry is here)")


def error_code(entry: OutputEntry) -> str:
    """The error code an attempt's end stands for, as the invoke API would answer it."""
    if entry.status is Status.TIMED_OUT:
        return "invocation_timeout"
    return entry.outcome.value if entry.outcome else "function_error"


def entry_out(stored: StoredEntry) -> InvocationLogEntry:
    """The API's view of a stored entry."""
    e = stored.entry
    out = InvocationLogEntry(cursor=stored.stream_seq, seq=e.seq, attempt=e.attempt, timestamp=e.at, type=e.kind)
    if e.kind == "output":
        try:
            out.data = e.data.decode()
        except UnicodeDecodeError:  # a binary write, or a character split between two pieces
            out.data, out.encoding = base64.b64encode(e.data).decode(), "base64"
        out.stream = e.stream
        return out
    out.status, out.exit_code, out.duration_ms = e.status, e.exit_code, e.duration_ms
    out.outcome = e.outcome.value if e.outcome else None
    out.stdout_bytes, out.stderr_bytes = e.stdout_bytes, e.stderr_bytes
    out.stdout_truncated, out.stderr_truncated = e.stdout_truncated, e.stderr_truncated
    if e.status is not Status.COMPLETED and e.status is not None:
        out.error = EntryError(code=error_code(e), message=e.error.message if e.error else "the function failed")
    return out


def entry_json(stored: StoredEntry) -> str:
    return json.dumps(entry_out(stored).model_dump(mode="json", exclude_none=True), separators=(",", ":"))


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _after(request: Request) -> int:
    raw = request.query_params.get("after", "0")
    try:
        after = int(raw)
    except ValueError:
        raise InvalidRequest("after must be a cursor (a non-negative integer)") from None
    if after < 0:
        raise InvalidRequest("after must be a cursor (a non-negative integer)")
    return after


async def get_invocation_logs(request: Request) -> Response:
    p = platform(request)
    invocation_id: str = request.path_params["invocation_id"]
    if not INVOCATION_ID_RE.match(invocation_id):
        raise InvocationNotFound(invocation_id)
    tenant = principal(request).tenant
    follow, after = _flag(request, "follow"), _after(request)
    record = await get_model(p.buckets.invocations, invocation_id, InvocationRecord)
    if record is not None and record.tenant != tenant:
        raise InvocationNotFound(invocation_id)
    # A sync invocation has no record for its first moments; its output under this tenant proves it.
    if record is None and not await has_output(p.js, tenant, invocation_id):
        raise InvocationNotFound(invocation_id)
    finished = record is not None and record.status.terminal
    if not follow or finished:
        entries = [entry_out(s) async for s in read_output(p.js, tenant, invocation_id, follow=False, after=after)]
        ended = finished or any(e.type == "end" and e.status is not None and e.status.terminal for e in entries)
        out = InvocationLogsOut(invocation_id=invocation_id, entries=entries, finished=ended)
        if follow:  # finished already: the whole log as NDJSON, as a follower expects it
            body = "".join(json.dumps(e.model_dump(mode="json", exclude_none=True)) + "\n" for e in entries)
            return Response(body, media_type=NDJSON, headers={"X-Invocation-Id": invocation_id})
        return JSONResponse(out.model_dump(mode="json", exclude_none=True))
    deadline = asyncio.get_running_loop().time() + p.settings.logs.follow_max_s
    lines = _ndjson(until(read_output(p.js, tenant, invocation_id, follow=True, after=after), deadline))
    return StreamingResponse(
        lines, media_type=NDJSON, headers={"X-Invocation-Id": invocation_id, "Cache-Control": "no-cache"}
    )


async def _ndjson(entries: AsyncIterator[StoredEntry]) -> AsyncIterator[str]:
    async for stored in entries:
        yield entry_json(stored) + "\n"
