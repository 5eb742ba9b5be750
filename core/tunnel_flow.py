"""The parts both ends of an HTTP tunnel share: settings, credit windows, the frame link.

Flow control: core NATS drops messages when a subscriber falls behind, so no
side ever sends body data it was not granted. A receiver grants ``window``
data frames up front and grants again as its reader consumes (in batches of
half a window), so at most ``window`` frames of ``chunk_bytes`` wait in memory
per stream and direction, however slow the reader.

Every frame carries a per-direction sequence number; a receiver that sees a
gap fails the stream (a lost frame must never become a silently short body).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NATS
from pydantic import BaseModel, Field, model_validator

from .codec import encode
from .errors import (
    SoulboxError,
    TunnelClosed,
    TunnelError,
    TunnelPeerLost,
    TunnelProtocolError,
    TunnelRemoteError,
)
from .tunnelframes import TunnelFault, TunnelFrame, TunnelFrameKind, TunnelRequestHead, TunnelResponseHead

# Room for the frame's envelope (sid, seq, kind, ...) and NATS headers under max_payload.
FRAME_OVERHEAD = 4096

UNKNOWN_STREAM = "tunnel_unknown_stream"


class TunnelSettings(BaseModel):
    """Flow control and liveness of tunnelled streams (the same on both ends)."""

    chunk_bytes: int = Field(64 * 1024, ge=1024, description="largest body chunk per frame (capped by max_payload)")
    window: int = Field(16, ge=2, description="data frames a receiver lets in flight per stream and direction")
    open_timeout_s: float = Field(5.0, gt=0, description="longest wait for the server to accept a stream")
    ping_interval_s: float = Field(5.0, gt=0, description="a side that sent nothing for this long pings")
    idle_timeout_s: float = Field(20.0, gt=0, description="a stream that received nothing for this long fails")
    max_streams: int = Field(4096, ge=1, description="concurrent streams a server accepts")
    unreachable_grace_s: float = Field(
        0.2, ge=0, description="how long an open retries 'no responders' (a subscription NATS does not show yet)"
    )

    @model_validator(mode="after")
    def _idle_after_ping(self) -> TunnelSettings:
        if self.idle_timeout_s <= self.ping_interval_s:
            raise ValueError("idle_timeout_s must be longer than ping_interval_s")
        return self

    def chunk_for(self, nc: NATS) -> int:
        return max(1024, min(self.chunk_bytes, nc.max_payload - FRAME_OVERHEAD))


Body = AsyncIterable[bytes] | bytes


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """A request as a tunnel server's handler sees it; ``body`` streams as frames arrive."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    target: dict[str, str]
    body: Inbound

    @classmethod
    def of(cls, head: TunnelRequestHead, body: Inbound) -> TunnelRequest:
        return cls(head.method, head.path, head.query, list(head.headers), dict(head.target), body)


@dataclass(slots=True)
class TunnelResponse:
    """What a handler returns; an async-iterable body streams under the client's credit."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""


Handler = Callable[[TunnelRequest], Awaitable[TunnelResponse]]


def fault_of(exc: BaseException) -> TunnelFault:
    """The error frame for a handler failure: our errors keep their code, OS errors mean unreachable."""
    if isinstance(exc, SoulboxError):
        return TunnelFault(code=exc.code, message=exc.message)
    if isinstance(exc, OSError):
        return TunnelFault(code="sandbox_unreachable", message=f"{type(exc).__name__}: {exc}")
    return TunnelFault(code="upstream_error", message=f"{type(exc).__name__}: {exc}")


async def chunked(body: Body, size: int) -> AsyncIterator[bytes]:
    """``body`` as non-empty pieces of at most ``size`` bytes (large chunks are split, none merged)."""
    if isinstance(body, bytes | bytearray | memoryview):
        view = memoryview(body)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    async for piece in body:
        if len(piece) <= size:
            if piece:
                yield bytes(piece)
            continue
        view = memoryview(piece)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])


class Credit:
    """Data frames this side may still send; the peer's credit frames add to it."""

    def __init__(self) -> None:
        self._available = 0
        self._wakeup = asyncio.Event()
        self._error: BaseException | None = None
        self.waits = 0  # times a sender had to wait: a reader slower than the writer

    def grant(self, frames: int) -> None:
        self._available += frames
        self._wakeup.set()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wakeup.set()

    async def take(self) -> None:
        while self._available <= 0 and self._error is None:
            self.waits += 1
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._error is not None:
            raise self._error
        self._available -= 1


class Inbound:
    """Body chunks received on one stream, read by one consumer (``async for``).

    Reading grants the sender new credit; frames past the granted credit are a
    protocol error, so at most ``window`` (+ one inline chunk) wait here.
    """

    def __init__(self, window: int, grant: Callable[[int], Awaitable[None]]) -> None:
        self._window = window
        self._grant = grant
        self._granted = window  # the initial grant travels with open / the accept
        self._received = 0
        self._consumed = 0
        self._chunks: deque[tuple[bytes, bool]] = deque()
        self._buffered_bytes = 0
        self._fin = False
        self._error: BaseException | None = None
        self._wakeup = asyncio.Event()
        self.max_buffered = 0  # most data frames waiting at once
        self.max_buffered_bytes = 0
        self.received_bytes = 0

    @property
    def finished(self) -> bool:
        return self._fin

    def push(self, data: bytes, *, counted: bool = True) -> None:
        if self._fin:
            raise TunnelProtocolError("data after the end of the body")
        if counted:
            self._received += 1
            if self._received > self._granted:
                raise TunnelProtocolError(f"peer sent data frame {self._received} past its credit {self._granted}")
        if not data:
            return
        self._chunks.append((data, counted))
        self._buffered_bytes += len(data)
        self.received_bytes += len(data)
        self.max_buffered = max(self.max_buffered, len(self._chunks))
        self.max_buffered_bytes = max(self.max_buffered_bytes, self._buffered_bytes)
        self._wakeup.set()

    def finish(self) -> None:
        self._fin = True
        self._wakeup.set()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wakeup.set()

    def __aiter__(self) -> Inbound:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._fin:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._error is not None:
            raise self._error  # a failed stream's buffered data is not handed out as if valid
        data, counted = self._chunks.popleft()
        self._buffered_bytes -= len(data)
        if counted:
            self._consumed += 1
            if self._consumed >= max(1, self._window // 2) and not self._fin:
                grant, self._consumed = self._consumed, 0
                self._granted += grant
                await self._grant(grant)
        return data

    async def read(self) -> bytes:
        """The whole remaining body (for small bodies)."""
        return b"".join([chunk async for chunk in self])


class Link:
    """One side of one stream: numbers outgoing frames, checks incoming ones, tracks liveness."""

    def __init__(self, nc: NATS, sid: str, subject: str, *, reply: str = "") -> None:
        self.sid = sid
        self.subject = subject  # where this side's frames go
        self._nc = nc
        self._reply = reply
        self._out_seq = 0
        self._in_seq = 0
        self.last_rx = self.last_tx = time.monotonic()

    async def send(
        self,
        kind: TunnelFrameKind,
        *,
        data: bytes = b"",
        fin: bool = False,
        credit: int = 0,
        request: TunnelRequestHead | None = None,
        response: TunnelResponseHead | None = None,
        fault: TunnelFault | None = None,
    ) -> None:
        # The sequence number is taken and the frame queued in nats-py's write buffer
        # before the first suspension, so frames leave in sequence order.
        frame = TunnelFrame(
            sid=self.sid,
            kind=kind,
            seq=self._out_seq,
            data=data,
            fin=fin,
            credit=credit,
            request=request,
            response=response,
            fault=fault,
        )
        self._out_seq += 1
        self.last_tx = time.monotonic()
        try:
            await self._nc.publish(self.subject, encode(frame), reply=self._reply)
        except nats.errors.Error as exc:
            raise TunnelClosed(f"cannot send on the tunnel: {exc!r}") from exc

    def received(self, frame: TunnelFrame) -> None:
        """Account for an incoming frame; a sequence gap raises ``TunnelProtocolError``."""
        self.last_rx = time.monotonic()
        expected = self._in_seq
        self._in_seq = frame.seq + 1
        if frame.seq != expected:
            raise TunnelProtocolError(f"stream {self.sid}: frame {frame.seq} arrived, expected {expected} (lost frame)")

    def idle_for(self, now: float) -> float:
        return now - self.last_rx

    def quiet_for(self, now: float) -> float:
        return now - self.last_tx


def remote_error(fault: TunnelFault | None) -> TunnelError:
    """The client-side error for the server's error frame."""
    if fault is not None and fault.code == UNKNOWN_STREAM:
        return TunnelPeerLost(f"the tunnel server lost the stream (restarted?): {fault.message}")
    if fault is None:
        return TunnelRemoteError("upstream_error", "the tunnel server failed the stream")
    return TunnelRemoteError(fault.code, fault.message)
