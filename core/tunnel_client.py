"""The client end of the HTTP tunnel: the gateway opens streams to a worker's tunnel server.

One wildcard inbox subscription per client; the server sends every frame of a
stream to ``<inbox>.<stream id>``. Each client frame is published with that
subject as its reply, so NATS answers "no responders" there when no tunnel
server listens (any more): an open fails at once and a killed worker is seen
at the next ping, not only at the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from types import TracebackType

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .codec import decode
from .errors import (
    SchemaError,
    TunnelClosed,
    TunnelError,
    TunnelPeerLost,
    TunnelProtocolError,
    TunnelTimeout,
    TunnelUnreachable,
)
from .logging import get_logger
from .tunnel_flow import Body, Credit, Inbound, Link, TunnelSettings, chunked, remote_error
from .tunnelframes import TunnelFrame, TunnelFrameKind, TunnelRequestHead, TunnelResponseHead

log = get_logger(__name__)

K = TunnelFrameKind
NO_RESPONDERS = "503"
# Frames are consumed at once by the callback, so this only bounds a burst.
SUB_PENDING_BYTES = 256 * 1024 * 1024
UNREACHABLE_RETRY_S = 0.05


class TunnelStream:
    """One tunnelled request: the response's ``status`` and ``headers``, then ``async for`` its body.

    Iterating raises a ``TunnelError`` when the stream fails (the body is then
    incomplete); ``aclose()`` cancels the stream on the server.
    """

    def __init__(self, client: TunnelClient, link: Link, window: int, chunk: int) -> None:
        self._client = client
        self.link = link
        self._chunk = chunk
        self.credit = Credit()
        self.body = Inbound(window, self._grant)
        self._accepted = asyncio.Event()
        self._headed = asyncio.Event()
        self._head: TunnelResponseHead | None = None
        self._error: TunnelError | None = None
        self._complete = False
        self._uploader: asyncio.Task[None] | None = None

    @property
    def sid(self) -> str:
        return self.link.sid

    @property
    def status(self) -> int:
        assert self._head is not None, "open() returns the stream only once its head arrived"
        return self._head.status

    @property
    def headers(self) -> list[tuple[str, str]]:
        assert self._head is not None, "open() returns the stream only once its head arrived"
        return list(self._head.headers)

    @property
    def done(self) -> bool:
        return self._complete or self._error is not None

    def __aiter__(self) -> Inbound:
        return self.body

    async def read(self) -> bytes:
        """The whole response body."""
        return await self.body.read()

    async def aclose(self) -> None:
        """Stop the stream: the server cancels its handler. Repeat-safe; a no-op once complete."""
        await self._abort(TunnelClosed("stream closed by the client"))
        uploader = self._uploader
        if uploader is not None and uploader is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await uploader

    async def __aenter__(self) -> TunnelStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- driven by the client ---------------------------------------------------------

    async def _grant(self, frames: int) -> None:
        await self.link.send(K.CREDIT, credit=frames)

    async def on_frame(self, frame: TunnelFrame) -> None:
        try:
            self.link.received(frame)
        except TunnelProtocolError as exc:
            # An error frame ends the stream anyway; its reason beats "a frame is missing".
            await self._abort(remote_error(frame.fault) if frame.kind is K.ERROR else exc)
            return
        self._accepted.set()
        try:
            if frame.kind is K.CREDIT:
                self.credit.grant(frame.credit)
            elif frame.kind is K.HEAD:
                if frame.response is None or self._head is not None:
                    raise TunnelProtocolError("a head frame needs a response head, once")
                self._head = frame.response
                self._headed.set()
                self.body.push(frame.data, counted=False)
                if frame.fin:
                    self._finish()
            elif frame.kind is K.DATA:
                self.body.push(frame.data)
                if frame.fin:
                    self._finish()
            elif frame.kind is K.END:
                self._finish()
            elif frame.kind is K.ERROR:
                self._fail(remote_error(frame.fault))
            elif frame.kind is not K.PING:
                raise TunnelProtocolError(f"unexpected {frame.kind} frame from the tunnel server")
        except TunnelProtocolError as exc:
            await self._abort(exc)

    def no_responders(self) -> None:
        if self._accepted.is_set():
            self._fail(TunnelPeerLost(f"the tunnel server on {self.link.subject} is gone"))
        else:
            self._fail(TunnelUnreachable(f"no tunnel server listens on {self.link.subject}"))

    async def wait_accepted(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._accepted.wait(), timeout)
        except TimeoutError:
            raise TunnelTimeout(f"the tunnel server on {self.link.subject} did not answer within {timeout}s") from None
        if self._head is None and self._error is not None:
            raise self._error  # a failure after the head shows when the body is read

    async def wait_head(self) -> None:
        await self._headed.wait()
        if self._head is None:
            assert self._error is not None
            raise self._error

    def start_upload(self, body: Body) -> None:
        self._uploader = asyncio.create_task(self._upload(body), name=f"tunnel-upload-{self.sid}")

    async def _upload(self, body: Body) -> None:
        try:
            async for piece in chunked(body, self._chunk):
                await self.credit.take()
                await self.link.send(K.DATA, data=piece)
            await self.link.send(K.END)
        except TunnelError as exc:
            await self._abort(exc)
        except Exception as exc:  # the body's source failed, e.g. the HTTP client went away
            await self._abort(TunnelClosed(f"request body failed: {exc!r}"))

    def _finish(self) -> None:
        # The response is complete: whatever is left of the upload is not wanted any more.
        self._complete = True
        self.body.finish()
        self._stop_upload()
        self._client._forget(self.sid)

    def _fail(self, exc: TunnelError) -> None:
        if self.done:
            return
        self._error = exc
        self._accepted.set()
        self._headed.set()
        self.body.fail(exc)
        self.credit.fail(exc)
        self._stop_upload()
        self._client._forget(self.sid)

    async def _abort(self, exc: TunnelError) -> None:
        """Fail the stream here and tell the server to cancel it."""
        if self.done:
            return
        self._fail(exc)
        with contextlib.suppress(TunnelError):
            await self.link.send(K.CANCEL)

    def _stop_upload(self) -> None:
        if self._uploader is not None and self._uploader is not asyncio.current_task():
            self._uploader.cancel()


class TunnelClient:
    """Opens tunnelled HTTP streams to tunnel servers; one per process, shared by all requests."""

    def __init__(self, nc: NATS, *, settings: TunnelSettings | None = None) -> None:
        self._nc = nc
        self.settings = settings or TunnelSettings()
        self._prefix = nc.new_inbox()
        self._streams: dict[str, TunnelStream] = {}
        self._sub: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            f"{self._prefix}.*", cb=self._on_msg, pending_bytes_limit=SUB_PENDING_BYTES
        )
        await self._nc.flush()
        self._ticker = asyncio.create_task(self._tick(), name="tunnel-client-ticker")

    async def close(self) -> None:
        """Cancel every open stream and stop receiving. Repeat-safe."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for stream in list(self._streams.values()):
            await stream.aclose()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def __aenter__(self) -> TunnelClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(
        self, subject: str, head: TunnelRequestHead, body: Body = b"", *, timeout: float | None = None
    ) -> TunnelStream:
        """Send ``head`` to the tunnel server on ``subject``, stream ``body`` up, wait for the response head.

        ``timeout`` (default: the settings' ``open_timeout_s``) bounds the wait for
        the server to accept the stream; after that the handler may take as long
        as it needs, watched by pings and the idle timeout. Raises
        ``TunnelUnreachable`` (nobody listens), ``TunnelTimeout``, ``TunnelRemoteError``
        (the handler failed before responding) or another ``TunnelError``.
        """
        if self._sub is None:
            raise TunnelClosed("the tunnel client is not started")
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (s.open_timeout_s if timeout is None else timeout)
        retry_until = loop.time() + s.unreachable_grace_s
        chunk = s.chunk_for(self._nc)
        # A body that fits one frame rides on the open: one frame for a small request.
        inline = bytes(body) if isinstance(body, bytes | bytearray | memoryview) and len(body) <= chunk else None
        while True:
            sid = uuid.uuid4().hex
            stream = TunnelStream(self, Link(self._nc, sid, subject, reply=f"{self._prefix}.{sid}"), s.window, chunk)
            self._streams[sid] = stream
            try:
                await stream.link.send(
                    K.OPEN, request=head, credit=s.window, data=inline or b"", fin=inline is not None
                )
                await stream.wait_accepted(max(0.0, deadline - loop.time()))
                break
            except TunnelUnreachable:
                # NATS makes a new subscription visible to publishers with a short delay
                # (more so across a cluster): "no responders" right after a worker started
                # is retried for a moment. The body is untouched until the server accepts.
                if loop.time() + UNREACHABLE_RETRY_S > min(retry_until, deadline):
                    raise
                await asyncio.sleep(UNREACHABLE_RETRY_S)
            except BaseException:
                await stream.aclose()
                raise
        try:
            if inline is None:
                stream.start_upload(body)
            await stream.wait_head()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    def _forget(self, sid: str) -> None:
        self._streams.pop(sid, None)

    async def _on_msg(self, msg: Msg) -> None:
        stream = self._streams.get(msg.subject.rsplit(".", 1)[-1])
        if stream is None:
            return  # a late frame of a finished stream
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            stream.no_responders()
            return
        try:
            frame = decode(TunnelFrame, msg.data)
        except SchemaError as exc:
            await stream._abort(TunnelProtocolError(f"undecodable tunnel frame: {exc.message}"))
            return
        await stream.on_frame(frame)

    async def _tick(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.ping_interval_s / 2)
            now = time.monotonic()
            for stream in list(self._streams.values()):
                if stream.link.idle_for(now) > s.idle_timeout_s:
                    log.warning("tunnel.peer_lost", sid=stream.sid, subject=stream.link.subject)
                    silent = f"nothing from the tunnel server on {stream.link.subject} for {s.idle_timeout_s}s"
                    await stream._abort(TunnelPeerLost(silent))
                elif stream.link.quiet_for(now) >= s.ping_interval_s:
                    with contextlib.suppress(TunnelError):
                        await stream.link.send(K.PING)
