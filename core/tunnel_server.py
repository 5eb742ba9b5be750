"""The server end of the HTTP tunnel: a worker serves tunnelled requests on its one subject.

Every client frame of every stream arrives on the server's subject; the open
frame's reply subject is where this stream's frames go back. Each stream runs
the handler in its own task; a cancel frame, the idle timeout or ``close()``
cancels that task, which closes the handler's response body (its generator's
``finally`` runs) and ends the request body iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .codec import decode, encode
from .errors import SchemaError, TunnelClosed, TunnelError, TunnelPeerLost, TunnelProtocolError
from .logging import get_logger
from .tunnel_flow import (
    UNKNOWN_STREAM,
    Credit,
    Handler,
    Inbound,
    Link,
    TunnelRequest,
    TunnelResponse,
    TunnelSettings,
    chunked,
    fault_of,
)
from .tunnelframes import TunnelFault, TunnelFrame, TunnelFrameKind, TunnelRequestHead, TunnelResponseHead

log = get_logger(__name__)

K = TunnelFrameKind
SUB_PENDING_BYTES = 256 * 1024 * 1024
# A request that came whole is accepted by its response head when the handler answers
# within this long (one frame fewer per small request), else by an explicit accept.
ACCEPT_DELAY_S = 0.02


@dataclass(slots=True)
class TunnelServerStats:
    """Counters of one tunnel server (for metrics and tests)."""

    opened: int = 0
    completed: int = 0
    failed: int = 0  # the handler raised; an error frame went to the client
    cancelled: int = 0  # by the client, the idle timeout or close()
    refused: int = 0  # over max_streams
    protocol_errors: int = 0
    credit_waits: int = 0  # times a response waited for the client's credit


class _ServerStream:
    def __init__(self, link: Link, head: TunnelRequestHead, *, window: int) -> None:
        self.link = link
        self.credit = Credit()
        self.body = Inbound(window, self._grant)
        self.request = TunnelRequest.of(head, self.body)
        self.task: asyncio.Task[None] | None = None
        self.accept_timer: asyncio.TimerHandle | None = None

    async def _grant(self, frames: int) -> None:
        await self.link.send(K.CREDIT, credit=frames)

    def on_frame(self, frame: TunnelFrame) -> None:
        """Route one client frame; a protocol violation raises ``TunnelProtocolError``."""
        self.link.received(frame)
        if frame.kind is K.DATA:
            self.body.push(frame.data)
            if frame.fin:
                self.body.finish()
        elif frame.kind is K.END:
            self.body.finish()
        elif frame.kind is K.CREDIT:
            self.credit.grant(frame.credit)
        elif frame.kind is K.CANCEL:
            self.cancel(TunnelClosed("the client cancelled the stream"))
        elif frame.kind is not K.PING:
            raise TunnelProtocolError(f"unexpected {frame.kind} frame from the tunnel client")

    def cancel_accept(self) -> None:
        if self.accept_timer is not None:
            self.accept_timer.cancel()
            self.accept_timer = None

    def cancel(self, exc: TunnelError) -> None:
        self.cancel_accept()
        self.body.fail(exc)
        self.credit.fail(exc)
        if self.task is not None:
            self.task.cancel()


class TunnelServer:
    """Serves tunnelled HTTP requests on ``subject`` with ``handler`` (one server per worker).

    ``handler(request) -> TunnelResponse`` may read ``request.body`` as it
    streams in and return a body that streams out; an exception becomes an
    error frame (its ``code`` if it is a ``SoulboxError``, ``sandbox_unreachable``
    for an ``OSError``, else ``upstream_error``).
    """

    def __init__(self, nc: NATS, subject: str, handler: Handler, *, settings: TunnelSettings | None = None) -> None:
        self._nc = nc
        self.subject = subject
        self._handler = handler
        self.settings = settings or TunnelSettings()
        self._streams: dict[str, _ServerStream] = {}
        self._sub: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._accepting: set[asyncio.Task[None]] = set()
        self.stats = TunnelServerStats()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_msg, pending_bytes_limit=SUB_PENDING_BYTES)
        await self._nc.flush()  # once start() returns, the server sees the subscription
        self._ticker = asyncio.create_task(self._tick(), name="tunnel-server-ticker")

    async def close(self) -> None:
        """Stop accepting, fail and cancel every stream in flight. Repeat-safe."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        streams = list(self._streams.values())
        for stream in streams:
            await self._fail(stream, TunnelClosed("the tunnel server is shutting down"))
        tasks = [s.task for s in streams if s.task is not None]
        await asyncio.gather(*tasks, *self._accepting, return_exceptions=True)

    async def __aenter__(self) -> TunnelServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            frame = decode(TunnelFrame, msg.data)
        except SchemaError as exc:
            self.stats.protocol_errors += 1
            log.warning("tunnel.bad_frame", error=exc.message)
            return
        stream = self._streams.get(frame.sid)
        if frame.kind is K.OPEN:
            if stream is None and msg.reply:
                await self._open(frame, msg.reply)
            return
        if stream is None:
            # A ping for a stream this server does not know: it restarted, or the
            # stream ended meanwhile. Say so, so the client does not wait for the idle timeout.
            if frame.kind is K.PING and msg.reply:
                await self._refuse(frame.sid, msg.reply, UNKNOWN_STREAM, "the tunnel server does not know this stream")
            return
        try:
            stream.on_frame(frame)
        except TunnelProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("tunnel.protocol_error", sid=frame.sid, error=exc.message)
            await self._fail(stream, exc)

    async def _open(self, frame: TunnelFrame, reply: str) -> None:
        if frame.request is None or frame.seq != 0:
            self.stats.protocol_errors += 1
            await self._refuse(frame.sid, reply, "tunnel_protocol_error", "an open frame needs a request head, seq 0")
            return
        if len(self._streams) >= self.settings.max_streams:
            self.stats.refused += 1
            await self._refuse(frame.sid, reply, "overloaded", f"the tunnel server has {len(self._streams)} streams")
            return
        link = Link(self._nc, frame.sid, reply)
        stream = _ServerStream(link, frame.request, window=self.settings.window)
        link.received(frame)
        stream.credit.grant(frame.credit)  # the response body's initial window
        self._streams[frame.sid] = stream
        self.stats.opened += 1
        stream.body.push(frame.data, counted=False)
        if frame.fin:
            stream.body.finish()
            stream.accept_timer = asyncio.get_running_loop().call_later(ACCEPT_DELAY_S, self._accept_late, stream)
        else:
            try:
                await link.send(K.CREDIT, credit=self.settings.window)  # the accept, with the body's credit
            except TunnelError:
                del self._streams[frame.sid]
                return
        stream.task = asyncio.create_task(self._serve(stream), name=f"tunnel-stream-{frame.sid}")

    def _accept_late(self, stream: _ServerStream) -> None:
        stream.accept_timer = None
        if stream.link.sid in self._streams:
            task = asyncio.create_task(self._send_accept(stream))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    async def _send_accept(self, stream: _ServerStream) -> None:
        with contextlib.suppress(TunnelError):
            await stream.link.send(K.CREDIT, credit=0)

    async def _refuse(self, sid: str, reply: str, code: str, message: str) -> None:
        frame = TunnelFrame(sid=sid, kind=K.ERROR, seq=0, fault=TunnelFault(code=code, message=message))
        with contextlib.suppress(Exception):
            await self._nc.publish(reply, encode(frame))

    async def _serve(self, stream: _ServerStream) -> None:
        response: TunnelResponse | None = None
        body: AsyncIterator[bytes] | None = None
        try:
            response = await self._handler(stream.request)
            body = chunked(response.body, self.settings.chunk_for(self._nc))
            await self._respond(stream, response, body)
            self.stats.completed += 1
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        except Exception as exc:
            self.stats.failed += 1
            fault = fault_of(exc)
            log.warning("tunnel.handler_failed", sid=stream.link.sid, code=fault.code, error=fault.message)
            with contextlib.suppress(TunnelError):
                await stream.link.send(K.ERROR, fault=fault)
        finally:
            stream.cancel_accept()
            self.stats.credit_waits += stream.credit.waits
            self._streams.pop(stream.link.sid, None)
            # Runs the handler's generator's finally now, even when it waits at a yield
            # (``async for`` does not close the iterator it leaves).
            for closable in (body, response.body if response is not None else None):
                aclose = getattr(closable, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

    async def _respond(self, stream: _ServerStream, response: TunnelResponse, body: AsyncIterator[bytes]) -> None:
        stream.cancel_accept()  # the head accepts
        head = TunnelResponseHead(status=response.status, headers=response.headers)
        whole = response.body
        if isinstance(whole, bytes | bytearray | memoryview) and len(whole) <= self.settings.chunk_for(self._nc):
            await stream.link.send(K.HEAD, response=head, data=bytes(whole), fin=True)
            return
        await stream.link.send(K.HEAD, response=head)
        async for piece in body:
            await stream.credit.take()
            await stream.link.send(K.DATA, data=piece)
        await stream.link.send(K.END)

    async def _fail(self, stream: _ServerStream, exc: TunnelError) -> None:
        """Tell the client the stream failed, then cancel it here."""
        self._streams.pop(stream.link.sid, None)
        with contextlib.suppress(TunnelError):
            await stream.link.send(K.ERROR, fault=TunnelFault(code=exc.code, message=exc.message))
        stream.cancel(exc)

    async def _tick(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.ping_interval_s / 2)
            now = time.monotonic()
            for stream in list(self._streams.values()):
                if stream.link.idle_for(now) > s.idle_timeout_s:
                    log.warning("tunnel.client_lost", sid=stream.link.sid)
                    await self._fail(stream, TunnelPeerLost(f"nothing from the tunnel client for {s.idle_timeout_s}s"))
                elif stream.link.quiet_for(now) >= s.ping_interval_s:
                    with contextlib.suppress(TunnelError):
                        await stream.link.send(K.PING)
