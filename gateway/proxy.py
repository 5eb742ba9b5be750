"""Forward an HTTP request through the NATS tunnel to a worker and stream the response back.

Pure ASGI, so neither body is ever held whole: the request body goes up as
uvicorn receives it (the tunnel's credit holds the client back when the
sandbox reads slowly), the response goes down as the worker sends it.
Hop-by-hop headers are dropped both ways; a Content-Length is kept. A tunnel
failure before the response starts is a JSON error; after it started, the
connection is closed without completing the body, so the client sees a
truncated response instead of a silently short one. When the client goes
away, the stream is cancelled and the worker's handler is cancelled with it.

Use ``TunnelProxyResponse`` from a Starlette endpoint, or mount ``TunnelProxy``
with a resolver that picks the worker's subject and target for each request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from soulbox.core.errors import SoulboxError, TunnelClosed, TunnelError, TunnelTimeout
from soulbox.core.logging import get_logger
from soulbox.core.tunnel import Body, TunnelClient, TunnelStream
from soulbox.core.tunnelframes import TunnelRequestHead

from .errors import error_response, status_of

log = get_logger(__name__)

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)

Resolver = Callable[[Scope], Awaitable[tuple[str, dict[str, str]]]]
"""A request's scope -> (the worker's tunnel subject, the target the worker routes by)."""


def end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` minus hop-by-hop ones: the fixed set, ``Proxy-*`` and those ``Connection`` names."""
    headers = list(headers)
    named = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith("proxy-"):
            continue
        kept.append((name, value))
    return kept


def tunnel_error_response(exc: SoulboxError) -> JSONResponse:
    """The JSON error for a failed tunnel (or a failed resolve)."""
    if isinstance(exc, TunnelTimeout):
        status = 504
    elif isinstance(exc, TunnelClosed) or exc.code == "overloaded":
        status = 503
    elif isinstance(exc, TunnelError):
        status = 502  # the worker or the sandbox behind it failed us
    else:
        status = status_of(exc)
    return error_response(status, exc.code, exc.message)


class _ClientGone(Exception):
    """The HTTP client disconnected."""


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    client: TunnelClient,
    subject: str,
    target: dict[str, str],
    timeout: float | None = None,
) -> None:
    """Proxy the HTTP request of ``scope`` to the tunnel server on ``subject``; see the module doc."""
    head = TunnelRequestHead(
        method=scope["method"],
        path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=end_to_end((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]),
        target=target,
    )
    body_read = asyncio.Event()
    gone = asyncio.Event()
    first = await receive()
    if first["type"] == "http.disconnect":
        return
    body: Body
    if not first.get("more_body", False):
        body = first.get("body", b"")  # the whole body: it can ride on the tunnel's open frame
        body_read.set()
    else:
        body = _rest_of_body(first.get("body", b""), receive, body_read, gone)

    async def watch_disconnect() -> None:
        # Only once the body is read: receive() has one reader at a time.
        await body_read.wait()
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    pump = asyncio.create_task(_pump(scope, receive, send, client, subject, head, body, timeout, gone))
    watcher = asyncio.create_task(watch_disconnect())
    try:
        await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Either the response is done, or the client is gone and cancelling the pump
        # closes the stream (a cancel frame to the worker).
        for task in (pump, watcher):
            task.cancel()
        for task in (pump, watcher):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _rest_of_body(
    first: bytes, receive: Receive, read: asyncio.Event, gone: asyncio.Event
) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            raise _ClientGone  # fails the upload, which cancels the stream
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            read.set()
            return


async def _pump(
    scope: Scope,
    receive: Receive,
    send: Send,
    client: TunnelClient,
    subject: str,
    head: TunnelRequestHead,
    body: Body,
    timeout: float | None,
    gone: asyncio.Event,
) -> None:
    try:
        stream = await client.open(subject, head, body, timeout=timeout)
    except TunnelError as exc:
        if gone.is_set():
            return  # nobody to answer
        await tunnel_error_response(exc)(scope, receive, send)
        return
    async with stream:
        await send(
            {
                "type": "http.response.start",
                "status": stream.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in end_to_end(stream.headers)],
            }
        )
        await _stream_body(stream, send, gone)


async def _stream_body(stream: TunnelStream, send: Send, gone: asyncio.Event) -> None:
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except TunnelError as exc:
        # Too late for an error response: end the connection without completing the body.
        if not gone.is_set():
            log.warning("proxy.aborted", sid=stream.sid, code=exc.code, error=exc.message)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class TunnelProxyResponse(Response):
    """What a Starlette endpoint returns to forward its request through the tunnel.

    ``await`` nothing of the request's body before returning it: the body is
    streamed from the connection as it arrives.
    """

    def __init__(
        self, client: TunnelClient, subject: str, target: dict[str, str], *, timeout: float | None = None
    ) -> None:
        super().__init__()
        self._client = client
        self._subject = subject
        self._target = target
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await forward(
            scope, receive, send, client=self._client, subject=self._subject, target=self._target, timeout=self._timeout
        )


class TunnelProxy:
    """An ASGI app that forwards every HTTP request to where ``resolve`` says (e.g. by Host header)."""

    def __init__(self, client: TunnelClient, resolve: Resolver, *, timeout: float | None = None) -> None:
        self._client = client
        self._resolve = resolve
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"TunnelProxy serves HTTP only, not {scope['type']}")
        try:
            subject, target = await self._resolve(scope)
        except SoulboxError as exc:
            await tunnel_error_response(exc)(scope, receive, send)
            return
        await forward(scope, receive, send, client=self._client, subject=subject, target=target, timeout=self._timeout)
