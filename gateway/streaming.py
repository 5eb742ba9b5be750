"""Streamed invocations: the function's output in the response body as it is produced.

Asked for on a synchronous invoke (``?stream=sse``, ``Accept:
text/event-stream`` or ``?stream=true``) or an HTTP route (header
``X-Soulbox-Stream: sse|raw``; the route's query and ``Accept`` are the function's):

* **SSE**: ``event: stdout`` / ``event: stderr`` with a JSON ``data`` (the
  piece as UTF-8 text, or base64 with ``"encoding": "base64"``, plus ``seq``
  and ``attempt``), then exactly one ``event: end`` whose JSON carries the
  outcome (``status``, ``outcome``, ``exit_code``, ``duration_ms``, byte
  counts, truncation flags; on failure ``error: {code, message}`` with the
  code the non-streamed call would have answered). An attempt lost with its
  worker and run again elsewhere shows as ``event: restart`` before the new
  attempt's output. A gateway that gets no end in time sends ``end`` with
  ``status: "unknown"`` and code ``invocation_timeout``.

**Raw** (``?stream=true``, ``X-Soulbox-Stream: raw``): the body is the function's stdout, chunked, as it
comes. The response starts with the first stdout piece; an invocation that
ends before printing anything answers exactly like a non-streamed call
(status code, headers, JSON error). Once streaming, success ends the body
normally; a failure (error, timeout, lost worker) cuts the connection before
the final chunk, so a client sees an incomplete body, and the invocation's
record says why.

Both read the invocation's ``SB_LOGS`` subject with an ordered consumer
(:mod:`soulbox.core.outputlog`): any gateway can serve any worker's output,
nothing is missed whether the consumer starts before or after the first
piece, and a slow client stalls only its own consumer (flow control), never
the worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from soulbox.core.errors import InvalidRequest
from soulbox.core.outputlog import StoredEntry, read_output, until
from soulbox.core.schemas import FunctionSpec, Status

from .logs import entry_out
from .platform import Platform, Submission


class StreamMode(StrEnum):
    SSE = "sse"
    RAW = "raw"


def stream_mode(request: Request, *, wait: bool, api: bool = True) -> StreamMode | None:
    """What the caller asked for: SSE, raw chunked stdout or (None) the whole result at the end.

    ``X-Soulbox-Stream: sse|raw`` everywhere; on the invoke API (``api``) also
    ``?stream=sse|true`` and ``Accept: text/event-stream``. HTTP routes leave
    the query and ``Accept`` to the function (a fetch handler may serve SSE itself).
    """
    flag = request.headers.get("x-soulbox-stream", "").lower()
    if not flag and api:
        flag = request.query_params.get("stream", "").lower()
        if not flag and "text/event-stream" in request.headers.get("accept", ""):
            flag = "sse"
    if flag in ("", "0", "false", "no"):
        return None
    if flag not in ("sse", "1", "true", "yes", "raw"):
        raise InvalidRequest("stream must be true (raw), sse or false")
    if not wait:
        raise InvalidRequest("streaming needs a synchronous invocation (no ?async)")
    return StreamMode.SSE if flag == "sse" else StreamMode.RAW


async def streamed_response(
    p: Platform,
    spec: FunctionSpec,
    submission: Submission,
    mode: StreamMode,
    whole: Callable[[], Awaitable[Response]],
) -> Response:
    """The response of a streamed invocation; ``whole``: the non-streamed answer (raw mode, nothing printed)."""
    invocation_id = submission.request.id
    deadline = asyncio.get_running_loop().time() + spec.limits.timeout_ms / 1000 + p.settings.gateway.sync_grace_s
    entries = until(read_output(p.js, spec.tenant, invocation_id, follow=True, until_end=True), deadline)
    headers = {"X-Invocation-Id": invocation_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if mode is StreamMode.SSE:
        events = _sse(entries, invocation_id, lambda: _forget(p, submission))
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    first = await _first_stdout(entries)
    if first is None:  # ended (or gave up) before any stdout: answer as a non-streamed call
        await entries.aclose()
        return await whole()
    relay = _RawRelay(first, entries, lambda: _forget(p, submission))
    return _CuttableStream(relay, headers=headers)


def _forget(p: Platform, submission: Submission) -> None:
    """The record's own delivery to this gateway is not needed: the stream carried the outcome."""
    if submission.result is not None:
        p.waiter.discard(submission.request.id)


def _sse_event(name: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _sse(
    entries: AsyncGenerator[StoredEntry, None], invocation_id: str, done: Callable[[], None]
) -> AsyncIterator[str]:
    attempt: int | None = None
    try:
        async for stored in entries:
            entry = stored.entry
            if attempt is not None and entry.attempt != attempt:
                yield _sse_event("restart", {"attempt": entry.attempt, "invocation_id": invocation_id})
            attempt = entry.attempt
            out = entry_out(stored).model_dump(mode="json", exclude_none=True)
            if entry.kind == "end":
                yield _sse_event("end", {"invocation_id": invocation_id, **out}, stored.stream_seq)
                return
            name = out.pop("stream")
            yield _sse_event(name, out, stored.stream_seq)
        error = {"code": "invocation_timeout", "message": "no end of the invocation within its timeout"}
        yield _sse_event("end", {"invocation_id": invocation_id, "status": "unknown", "error": error})
    finally:
        await entries.aclose()
        done()


async def _first_stdout(entries: AsyncGenerator[StoredEntry, None]) -> StoredEntry | None:
    async for stored in entries:
        if stored.entry.kind == "end":
            return None
        if stored.entry.stream == "stdout":
            return stored
    return None


class _RawRelay:
    """Raw mode's body: stdout pieces of the first attempt; ``complete`` once it ended well."""

    def __init__(self, first: StoredEntry, entries: AsyncGenerator[StoredEntry, None], done: Callable[[], None]):
        self.first = first
        self.entries = entries
        self.done = done
        self.complete = False

    async def body(self) -> AsyncGenerator[bytes, None]:
        attempt = self.first.entry.attempt
        try:
            yield self.first.entry.data
            async for stored in self.entries:
                entry = stored.entry
                if entry.attempt != attempt:
                    return  # run again elsewhere: what was sent cannot be taken back
                if entry.kind == "end":
                    self.complete = entry.status is Status.COMPLETED
                    return
                if entry.stream == "stdout":
                    yield entry.data
        finally:
            await self.entries.aclose()
            self.done()


class _CuttableStream(StreamingResponse):
    """A streamed body that ends with the final empty chunk only if the relay says it completed.

    Returning without it makes the server close the connection mid-body: the
    one signal of failure a plain chunked HTTP body has.
    """

    def __init__(self, relay: _RawRelay, *, headers: dict[str, str]) -> None:
        self._body = relay.body()
        super().__init__(self._body, media_type="application/octet-stream", headers=headers)
        self.relay = relay

    async def stream_response(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.relay.complete:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._body.aclose()  # a client gone mid-body: stop reading its output now
