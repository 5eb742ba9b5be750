"""One loop that feeds lifecycle events from a durable consumer to a recorder.

The loop pulls a batch from a durable pull consumer on ``SB_EVENTS``, decodes
it, hands the decoded events to its recorder in one call, and acknowledges the
batch only after the recorder returned. Two batches are settled at a time: the
next one is decoded and recorded while the previous one waits for its writes
to be confirmed, and acknowledged only after it (the next request is sent as
soon as a batch is in hand, see :mod:`soulbox.core.fetch`). The durable's
``max_ack_pending`` bounds what the server hands out, so a slow recorder slows
the fetching instead of growing a queue.

    fetch(batch) ──> decode ──> recorder.record(events) ──> (previous batch settled) ──> ack
                       │                    │
                 undecodable: term     raised: nak all (delayed redelivery)

With ``ack_all`` (a durable with ``AckPolicy.ALL``) one ack settles the batch:
acking a message acknowledges every earlier one of the durable, so the loop
must never ack past an event nobody recorded. It retries a failed batch itself
(with the same back-off) instead of nak'ing it and moving on, acks only up to
what it recorded without a gap after the durable's ack floor (``_ack_upto``),
skips an undecodable message (the ack covers it) instead of terminating it,
and acks nothing it took before the server moved the pin to another process
(see :mod:`soulbox.core.fetch`): such a batch is nak'd. That is only sound while one
process at a time is served by the durable, which the pinned-client priority
group enforces (:mod:`.topology`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, Final, Generic, Protocol, TypeVar, runtime_checkable

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from pydantic import TypeAdapter, ValidationError

from soulbox.core import names, tracing
from soulbox.core.codec import decode_items
from soulbox.core.errors import SchemaError
from soulbox.core.eventbatch import unpack_events
from soulbox.core.fetch import BatchFetcher
from soulbox.core.logging import get_logger
from soulbox.core.schemas import LifecycleEvent, Message

log = get_logger(__name__)

MAX_RETRY_DELAY_S: Final = 30.0
"""The longest a failed batch waits for its redelivery."""


M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


@runtime_checkable
class BatchRecorder(Protocol[R]):
    """A sink for lifecycle events (or other messages); what every recorder must provide.

    - **Idempotent on redelivery.** Delivery is at-least-once: the same event
      (same ``event.id``) may arrive again, in the same batch, in a later one,
      or after events that happened later. Recording it twice must leave the
      same result as recording it once (key writes by id, de-duplicate publishes
      with ``Nats-Msg-Id``, or remember recent ids).
    - **Durable before returning.** ``record`` returns only once its effects are
      stored (pipelined writes awaited), because the batch is acknowledged right
      after it returns and will never be seen again.
    - **Raise to retry.** Any exception makes the loop negatively acknowledge
      the whole batch, which the server redelivers after a short delay; a
      recorder therefore never acknowledges messages itself and may fail half
      way through a batch.
    - **Order-tolerant.** Events of one invocation may arrive out of order.
    - **Bounded time.** A batch must be recorded well within the consumer's
      ack wait (30 s); batch and pipeline work, never one round trip per event.
    """

    async def record(self, events: list[R], /) -> None: ...


@runtime_checkable
class Recorder(BatchRecorder[LifecycleEvent], Protocol):
    """A recorder of lifecycle events."""


class EventConsumer(Generic[M]):
    """Runs ``recorder`` over the durable ``durable`` until ``stop`` is set.

    ``model`` is what the stream's messages decode to (lifecycle events by
    default; the audit intake stream holds ``AuditRecord`` messages).

    ``batch`` bounds the events held in memory (about: a message may hold
    several, see :mod:`soulbox.core.eventbatch`), ``fetch_timeout`` how long one
    idle fetch waits (and so how quickly ``stop`` is noticed), ``linger`` how
    long events may gather on the server after a short batch, ``retry_delay``
    how long the server holds a failed batch before its first redelivery
    (doubling for each further one, see ``MAX_RETRY_DELAY_S``), and
    ``error_backoff`` the pause after a failed fetch (e.g. while reconnecting).
    """

    def __init__(
        self,
        nc: NATS,
        recorder: BatchRecorder[M],
        *,
        durable: str,
        batch: int,
        model: type[M] = LifecycleEvent,  # type: ignore[assignment]
        stream: str = names.EVENTS_STREAM,
        fetch_timeout: float = 0.5,
        linger: float = 0.02,
        retry_delay: float = 1.0,
        error_backoff: float = 0.5,
        group: str | None = None,
        ack_all: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._nc = nc
        self._recorder = recorder
        self._model = model
        self._durable = durable
        self._stream = stream
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._linger = linger
        self._batch_adapter: TypeAdapter[list[M]] = TypeAdapter(list[model])  # type: ignore[valid-type]
        self._retry_delay = retry_delay
        self._error_backoff = error_backoff
        self._group = group
        self._ack_all = ack_all
        self._fetcher: BatchFetcher | None = None
        self._floor = 0  # ack_all: the durable's ack floor as far as this process knows (refreshed on a gap)
        self._recorded: dict[int, Msg] = {}  # ack_all: recorded, not yet acknowledged, above the floor
        self._per_message = 1.0  # events per message lately
        self._stop = asyncio.Event()
        self._log = log.bind(consumer=durable, stream=stream)
        self._span_attributes = {"messaging.system": "nats", "messaging.consumer.group.name": durable}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is always settled first."""
        fetcher = BatchFetcher(self._nc, stream=self._stream, durable=self._durable, group=self._group)
        self._fetcher, self._stop = fetcher, stop
        await fetcher.start()
        self._log.info("events.consumer.started", batch=self._batch)
        previous: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                msgs = await self._fetch(fetcher, stop)
                if not msgs:
                    continue
                # Two batches at a time: this one is decoded and recorded while the previous one
                # waits for its writes to be confirmed; its acks follow the previous one's.
                current = asyncio.create_task(self._settle(msgs, fetcher.taken_unpins, previous))
                if previous is not None:
                    await previous
                previous = current
        finally:
            if previous is not None:
                await previous
            try:
                await fetcher.stop()
            except NatsError as exc:  # the connection may already be closing
                self._log.debug("events.consumer.unsubscribe_failed", error=str(exc))
            self._log.info("events.consumer.stopped")

    async def _fetch(self, fetcher: BatchFetcher, stop: asyncio.Event) -> list[Msg]:
        # ``batch`` counts events; a message may carry a producer's batch of them, so ask for as many
        # messages as held ``batch`` events lately (a batch must be recorded well within the ack wait)
        messages = max(1, min(self._batch, round(self._batch / self._per_message)))
        try:
            return await fetcher.fetch(messages, timeout=self._fetch_timeout, linger=self._linger)
        except (NatsError, OSError) as exc:  # disconnected, reconnecting, consumer gone...
            self._log.warning("events.fetch_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._error_backoff)
            return []

    def _observe(self, messages: int, events: int) -> None:
        """Follow how many events a message holds (a moving average over recent batches)."""
        if messages:
            self._per_message += (max(1.0, events / messages) - self._per_message) * 0.5

    def _decode_batch(self, msgs: list[Msg]) -> list[M] | None:
        """The batch's wanted messages decoded in one validation, or None when any message needs
        a closer look."""
        raw: list[Any] = []
        try:
            for msg in msgs:
                items = unpack_events(msg.data)
                for item in items:
                    if (
                        not isinstance(item, dict)
                        or not isinstance(v := item.get("v", 1), int)
                        or v > self._model.max_version
                    ):
                        return None
                raw.extend(items)
            return self._batch_adapter.validate_python(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValidationError):
            return None

    async def _settle(self, msgs: list[Msg], epoch: int, previous: asyncio.Task[None] | None) -> None:
        """Decode, record and acknowledge one batch (after ``previous`` settled): the handling of every
        message. ``epoch`` is the fetcher's ``unpins`` when the batch was taken."""
        decoded = self._decode_batch(msgs)
        if decoded is not None:
            self._observe(len(msgs), len(decoded))
            await self._record(decoded, msgs, epoch, previous)
            return
        events: list[M] = []
        accepted: list[Msg] = []
        for msg in msgs:  # some message (or batched event) is not a valid one: find it, keep the rest
            try:
                items: list[M | SchemaError] = decode_items(self._model, msg.data)
            except SchemaError as exc:
                items = [exc]
            invalid = [item for item in items if isinstance(item, SchemaError)]
            for problem in invalid:
                self._log.warning(
                    "events.undecodable",
                    subject=msg.subject,
                    seq=msg.metadata.sequence.stream,
                    error=problem.message,
                )
            if invalid and len(invalid) == len(items) and not self._ack_all:
                await msg.term()  # nothing in it to record, ever
                continue
            # with ack_all one ack covers a skipped message like a terminated one; never redelivered
            accepted.append(msg)
            events.extend(item for item in items if not isinstance(item, SchemaError))
        self._observe(len(msgs), len(events))
        await self._record(events, accepted, epoch, previous)

    async def _record(
        self, events: list[M], accepted: list[Msg], epoch: int, previous: asyncio.Task[None] | None
    ) -> None:
        """Record ``events`` and settle ``accepted`` (their messages) with the outcome."""
        if not events:
            await self._ack(accepted, epoch, previous)
            return
        if self._log.is_enabled_for(logging.DEBUG):  # counting the kinds costs more than the call
            self._log.debug("events.batch", count=len(events), kinds=dict(Counter(_kind(e) for e in events)))
        try:
            with tracing.consume(f"{self._durable} process", accepted, self._span_attributes):
                await self._recorder.record(events)
        except Exception as exc:  # any failure: the whole batch comes back later
            self._log.warning("events.record_failed", count=len(events), error=repr(exc))
            if self._ack_all:
                await self._retry(events, accepted, epoch, previous)
            else:
                await _wait(previous)
                await _reply_all(accepted, retry_delay=self._retry_delay)
        else:
            await self._ack(accepted, epoch, previous)

    async def _retry(
        self, events: list[M], accepted: list[Msg], epoch: int, previous: asyncio.Task[None] | None
    ) -> None:
        """Record ``events`` again until it works (or ``stop``): with one ack for everything up to a
        sequence, a batch given back to the server would be acknowledged by the next one's ack."""
        delay = self._retry_delay
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                await _wait(previous)
                await _reply_all(accepted, retry_delay=0.0)
                return
            try:
                await self._recorder.record(events)
            except Exception as exc:
                self._log.warning("events.record_failed", count=len(events), error=repr(exc))
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
            else:
                await self._ack(accepted, epoch, previous)
                return

    async def _ack(self, msgs: list[Msg], epoch: int, previous: asyncio.Task[None] | None) -> None:
        """Acknowledge recorded messages once ``previous`` is settled: each one, or with ``ack_all``
        see ``_ack_upto``."""
        await _wait(previous)
        if not self._ack_all:
            await _reply_all(msgs)
            return
        fetcher = self._fetcher
        if fetcher is None:
            return
        if fetcher.unpins != epoch:  # the pin moved on: its holder records them (again)
            self._recorded.clear()
            await _reply_all(msgs, retry_delay=0.0)
            return
        for msg in msgs:
            seq = stream_seq(msg.reply)
            if seq > self._floor:
                self._recorded[seq] = msg
        try:
            await self._ack_upto(fetcher)
        except NatsError as exc:  # unacknowledged messages are redelivered after the ack wait
            log.warning("events.reply_failed", count=len(msgs), error=repr(exc))

    async def _ack_upto(self, fetcher: BatchFetcher) -> None:
        """One ack for the highest recorded sequence that covers nothing unrecorded.

        An ack covers every sequence up to its own, also messages delivered to a
        process that died with them and not yet redelivered (redeliveries come in
        no particular order). So the ack goes to the end of the recorded run
        that follows the durable's ack floor without a gap; past a gap only when
        the server says that every message it awaits an ack for is one this
        process holds (then the gap holds nothing to deliver). Never past a
        message held but not recorded yet.
        """
        held = [stream_seq(msg.reply) for msg in fetcher.buffered]
        below = min(held) if held else None
        recorded = self._recorded
        top = self._contiguous(below)
        if any(seq > top and (below is None or seq < below) for seq in recorded):  # a gap: ask the server
            info = await self._nc.jetstream().consumer_info(self._stream, self._durable)
            self._floor = max(self._floor, info.ack_floor.stream_seq if info.ack_floor else 0)
            for seq in [seq for seq in recorded if seq <= self._floor]:
                del recorded[seq]
            top = self._contiguous(below)
            if (info.num_ack_pending or 0) == len(recorded) + len(held):
                top = max([seq for seq in recorded if below is None or seq < below], default=top)
        if top <= self._floor:
            return
        await recorded[top].ack()
        for seq in [seq for seq in recorded if seq <= top]:
            del recorded[seq]
        self._floor = top

    def _contiguous(self, below: int | None) -> int:
        """The end of the recorded run right after the known ack floor (and below ``below``)."""
        top = self._floor
        while top + 1 in self._recorded and (below is None or top + 1 < below):
            top += 1
        return top


async def _wait(task: asyncio.Task[None] | None) -> None:
    """Until ``task`` (a batch being settled, which handles its own errors) is done."""
    if task is not None:
        await asyncio.shield(task)


def stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream ack subject (v1 ``$JS.ACK.<stream>.<consumer>.<n>.<sseq>...``
    or v2 with domain and account hash in front)."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def _kind(message: Message) -> str:
    return message.type.value if isinstance(message, LifecycleEvent) else type(message).__name__


async def _reply_all(msgs: list[Msg], *, retry_delay: float | None = None) -> None:
    """Ack every message, or nak it when ``retry_delay`` is given.

    A nak'd message comes back after ``retry_delay`` doubled for each earlier
    delivery, up to ``MAX_RETRY_DELAY_S``, so a recorder that keeps failing
    (its bucket is gone, NATS is degraded) is retried slowly, not in a hot loop.
    Each reply is a buffered publish, not a round trip.
    """
    try:
        for msg in msgs:
            if retry_delay is None:
                await msg.ack()
            elif retry_delay <= 0:
                await msg.nak()
            else:
                attempts = msg.metadata.num_delivered
                await msg.nak(delay=min(retry_delay * 2 ** min(attempts - 1, 16), MAX_RETRY_DELAY_S))
    except NatsError as exc:  # unacknowledged messages are redelivered after the ack wait
        log.warning("events.reply_failed", count=len(msgs), error=repr(exc))
