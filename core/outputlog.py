"""Invocation output on the ``SB_LOGS`` stream: the worker's publisher and the gateway's reader.

One subject per invocation (:func:`~soulbox.core.names.invocation_logs_subject`)
holds its :class:`OutputEntry` messages: output pieces
numbered from 1 within an attempt, then that attempt's ``end`` entry.

The worker side (:class:`OutputPublisher`) is an output sink: ``write`` only
appends to a buffer, and a flusher publishes what gathered every
``flush_ms`` (or as soon as a message's worth is there) with
``publish_async``; acknowledgements are checked off the hot path. Nothing a
reader does can slow a guest down: readers are JetStream consumers of the
stored stream, so a slow client holds back only its own consumer (flow
control), and the worker's buffer never holds more than one flush interval
of output, itself bounded by the function's output cap.

The reader side (:func:`read_output`) is an ordered consumer on the subject
from its first message; it can start before or after the worker publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, PubAck
from pydantic import Field

from . import names
from .codec import decode, encode
from .errors import SchemaError
from .logging import get_logger
from .schemas import InvocationError, InvocationRecord, Message, Outcome, Status, utcnow

log = get_logger(__name__)

ACK_TIMEOUT_S = 10.0
PENDING_MSGS = 4096  # flow control holds the server back long before a reader's queue is this full
HEARTBEAT_S = 2.0  # the ordered consumer's idle heartbeat: a lost consumer is recreated within 2 of these


OutputStream = Literal["stdout", "stderr"]


class OutputEntry(Message):
    """Worker -> ``SB_LOGS``: a piece of an invocation's output as it was produced, or an attempt's end.

    Entries are numbered by ``seq`` from 1 within an ``attempt``. An attempt's
    last entry has ``kind="end"`` and carries how it ended (``status`` is
    ``retrying`` when another attempt follows). ``data`` is raw bytes: the
    worker publishes at most the function's ``max_output_bytes`` per stream.
    """

    invocation_id: str
    attempt: int = 1
    seq: int
    at: datetime = Field(default_factory=utcnow)
    kind: Literal["output", "end"] = "output"
    stream: OutputStream | None = None
    data: bytes = b""
    status: Status | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    error: InvocationError | None = None
    duration_ms: float | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class OutputPublisher:
    """An :class:`~soulbox.runtimes.protocol.OutputSink` that batches one attempt's output onto ``SB_LOGS``."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        tenant: str,
        invocation_id: str,
        attempt: int,
        flush_s: float,
        chunk_bytes: int,
    ) -> None:
        self._js = js
        self._subject = names.invocation_logs_subject(tenant, invocation_id)
        self._invocation_id = invocation_id
        self._attempt = attempt
        self._flush_s = flush_s
        self._chunk_bytes = chunk_bytes
        self._pending: list[tuple[OutputStream, bytearray]] = []
        self._pending_bytes = 0
        self._seq = 0
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._acks: set[asyncio.Future[PubAck]] = set()
        self._failures = 0
        self._closing = False
        # Started by the first flush that cannot wait for finish(): output that only comes at
        # the end (the Wasmtime tier) is published by finish() itself, with no task at all.
        self._flusher: asyncio.Task[None] | None = None

    def write(self, stream: OutputStream, data: bytes) -> None:
        """Take output; never blocks. Consecutive writes to one stream are joined into one piece."""
        if not data:
            return
        if self._pending and self._pending[-1][0] == stream:
            self._pending[-1][1].extend(data)
        else:
            self._pending.append((stream, bytearray(data)))
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._chunk_bytes:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._kick)

    def _kick(self) -> None:
        if self._flusher is None and not self._closing:
            self._flusher = asyncio.create_task(self._flush_loop())
        self._wake.set()

    async def finish(self, record: InvocationRecord) -> None:
        """Publish what is left and the attempt's ``end`` entry (from its final ``record``).

        Returns once every message is handed to the connection (so it precedes
        anything the worker publishes next), without waiting for acknowledgements:
        :meth:`confirmed` does.
        """
        await self._stop()
        await self._flush()
        self._seq += 1
        end = OutputEntry(
            invocation_id=self._invocation_id,
            attempt=self._attempt,
            seq=self._seq,
            kind="end",
            status=record.status,
            outcome=record.outcome,
            exit_code=record.exit_code,
            error=record.error,
            duration_ms=record.duration_ms,
            stdout_bytes=record.stdout_bytes,
            stderr_bytes=record.stderr_bytes,
            stdout_truncated=record.stdout_truncated,
            stderr_truncated=record.stderr_truncated,
        )
        await self._publish(end)

    async def confirmed(self) -> None:
        """Wait (bounded) until the stream acknowledged everything published; failures are logged, never raised:
        output is not worth re-running an invocation for."""
        acks = list(self._acks)
        pending: set[asyncio.Future[PubAck]] = set()
        if acks:
            _, pending = await asyncio.wait(acks, timeout=ACK_TIMEOUT_S)
        for ack in pending:
            ack.cancel()
        if self._failures or pending:
            log.warning("output.unconfirmed", invocation_id=self._invocation_id, messages=self._failures + len(pending))

    async def close(self) -> None:
        """Stop without an end entry (the worker failed before the attempt's record existed); repeat-safe."""
        await self._stop()
        if self._timer is not None:
            self._timer.cancel()

    async def _stop(self) -> None:
        """Let the flusher finish the flush it is in (a cancel would lose its pieces), then end it."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await stop_flusher(self._flusher)

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            await self._flush()

    async def _flush(self) -> None:
        self._wake.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        at = utcnow()
        for stream, data in pending:
            for start in range(0, len(data), self._chunk_bytes):
                self._seq += 1
                piece = bytes(data[start : start + self._chunk_bytes])
                await self._publish(
                    OutputEntry(
                        invocation_id=self._invocation_id,
                        attempt=self._attempt,
                        seq=self._seq,
                        at=at,
                        stream=stream,
                        data=piece,
                    )
                )

    async def _publish(self, entry: OutputEntry) -> None:
        try:
            ack = await self._js.publish_async(self._subject, encode(entry))
        except Exception as exc:  # NATS away or too many stalled publishes: this piece is lost, the run goes on
            self._failures += 1
            log.warning("output.publish_failed", invocation_id=self._invocation_id, error=repr(exc))
            return
        self._acks.add(ack)
        ack.add_done_callback(self._acked)

    def _acked(self, ack: asyncio.Future[PubAck]) -> None:
        self._acks.discard(ack)
        if not ack.cancelled() and ack.exception() is not None:
            self._failures += 1


async def stop_flusher(flusher: asyncio.Task[None]) -> None:
    """Wait for a flusher told to stop; one that failed is logged (its publisher goes on without it)."""
    try:
        await flusher
    except Exception as exc:
        log.warning("output.flusher_failed", error=repr(exc))


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An output entry as read back, with its place in the stream (what ``after=`` resumes from)."""

    stream_seq: int
    entry: OutputEntry


async def read_output(
    js: JetStreamContext,
    tenant: str,
    invocation_id: str,
    *,
    follow: bool,
    until_end: bool = False,
    after: int = 0,
) -> AsyncGenerator[StoredEntry, None]:
    """The invocation's stored entries in order; with ``follow``, also those still to come.

    Without ``follow`` it stops at the last entry stored now. With it, it
    stops after the ``end`` entry of a finished invocation (``status`` not
    ``retrying``), or after the first ``end`` when ``until_end``; the caller
    bounds the wait. ``after``: a stream sequence already seen.
    """
    async for msg in read_subject(js, names.invocation_logs_subject(tenant, invocation_id), follow=follow, after=after):
        try:
            entry = decode(OutputEntry, msg.data)
        except SchemaError as exc:
            log.warning("output.bad_entry", invocation_id=invocation_id, error=exc.message)
            continue
        yield StoredEntry(msg.metadata.sequence.stream, entry)
        if entry.kind == "end" and (until_end or entry.status is None or entry.status.terminal):
            return


async def read_subject(
    js: JetStreamContext, subject: str, *, follow: bool, after: int = 0
) -> AsyncGenerator[Msg, None]:
    """The messages of one ``SB_LOGS`` subject in order, through an ordered consumer.

    Without ``follow`` it stops at the last message stored now; with it, it
    waits for more until the caller stops (or bounds it with :func:`until`).
    """
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if after:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    sub = await js.subscribe(
        subject,
        stream=names.LOGS_STREAM,
        config=config,
        ordered_consumer=True,
        idle_heartbeat=HEARTBEAT_S,
        pending_msgs_limit=PENDING_MSGS,
    )
    try:
        if not follow:
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0  # pushed before this answer
            if not info.num_pending and not delivered:
                return
        while True:
            msg: Msg = await sub.next_msg(timeout=None)
            yield msg
            if not follow and not msg.metadata.num_pending:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def subject_has_messages(js: JetStreamContext, subject: str) -> bool:
    """Whether ``SB_LOGS`` holds anything on ``subject``."""
    try:
        await js.get_last_msg(names.LOGS_STREAM, subject)
    except Exception:  # NotFoundError: nothing stored
        return False
    return True


async def has_output(js: JetStreamContext, tenant: str, invocation_id: str) -> bool:
    """Whether the stream holds anything of the invocation under ``tenant``."""
    return await subject_has_messages(js, names.invocation_logs_subject(tenant, invocation_id))


T = TypeVar("T")


async def until(items: AsyncGenerator[T, None], deadline: float) -> AsyncGenerator[T, None]:
    """``items`` until the event loop's clock reaches ``deadline``; then (or when done) they are closed.

    The wait is per item, in the generator's own step, so a consumer busy
    elsewhere (a slow client) is never cancelled by the deadline.
    """
    loop = asyncio.get_running_loop()
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                item = await asyncio.wait_for(anext(items), remaining)
            except (StopAsyncIteration, TimeoutError):
                return
            yield item
    finally:
        await items.aclose()
