"""Lifecycle events on the wire: one event per message, or a batch of one type.

A message on ``sb.events.<type>`` holds either one event (a msgpack map, with
``Nats-Msg-Id`` = the event's id) or a *batch*: a msgpack array of such maps,
all of that subject's type, with ``Nats-Msg-Id`` = ``batch.<first id>.<last
id>.<count>``. :func:`unpack_events` reads both.

Producers batch by group commit (:class:`EventBatcher`): an event published
while no batch of its type is on its way to the server goes out on the next
turn of the event loop (with whatever else was published in that turn); while
one is on its way, events of that type gather and go together once its ack
comes back (or after 2 ms, so that a lost ack holds nothing up), or at once
when they fill a batch. An idle producer thus adds no
wait, and a busy one sends one message per type and round trip instead of one
per event, which cuts the per-message work of the producer, nats-server and
every consumer by the batch size.

A batch is stored whole or not at all (one message), and the publisher's
future for each of its events resolves with the batch's ack. Consumers stay
idempotent by event id as before: a producer that dies before its ack and
publishes again may batch differently, so the server's de-duplication covers
identical re-sends only.

With tracing on, every event goes alone with its own span and trace headers,
as a batch's one header block cannot link each event to its own trace.

The batcher works per subject on messages already encoded
(:meth:`EventBatcher.publish_encoded`), so other records that many requests
write, each on its own, go the same way: the gateway's API-call records for
the audit intake (``events.audit.record_api_call``), in the same envelope.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
from nats.js import JetStreamContext
from nats.js.api import PubAck

from . import tracing
from .codec import decode_items, encode_sparse
from .errors import SchemaError
from .names import event_subject
from .schemas import LifecycleEvent

MAX_BATCH_EVENTS: Final = 256
"""The most events one message carries."""
MAX_BATCH_BYTES: Final = 256 * 1024
"""A batch is sent once it holds this many bytes (well under NATS's 1 MiB default max payload)."""
MAX_WAIT_S: Final = 0.002
"""The longest events wait for the batch on its way before them: its ack normally returns well
within this, and one that is lost (a reconnect) holds nothing back for longer."""
ACK_TIMEOUT_S: Final = 5.0
"""How long a batch's ack is awaited. nats-py never completes the future of an ack lost in a
reconnect: past this the batch counts as failed (its publishers see it and publish again) and the
events gathered behind it go out."""


def unpack_events(data: bytes) -> list[Any]:
    """The raw event maps a message holds (one, or a batch's); raises msgpack's errors on bad data."""
    item = msgpack.unpackb(data, timestamp=3)
    return item if isinstance(item, list) else [item]


def decode_events(data: bytes) -> list[LifecycleEvent]:
    """Every event of a message (one, or a batch's); ``SchemaError`` when any is not a valid one."""
    results = decode_items(LifecycleEvent, data)
    for result in results:
        if isinstance(result, SchemaError):
            raise result
    return results  # type: ignore[return-value]


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def pack_batch(encoded: list[bytes]) -> bytes:
    """A batch message's payload from events already encoded one by one (no second encoding)."""
    return _array_header(len(encoded)) + b"".join(encoded)


def batch_msg_id(first: str, last: str, count: int) -> str:
    return f"batch.{first}.{last}.{count}"


@dataclass(slots=True)
class _Pending:
    """Messages for one subject waiting to go out."""

    payloads: list[bytes] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    futures: list[asyncio.Future[PubAck]] = field(default_factory=list)
    size: int = 0


class EventBatcher:
    """Publishes one process's lifecycle events over ``js`` by group commit (see the module)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        max_events: int = MAX_BATCH_EVENTS,
        max_bytes: int = MAX_BATCH_BYTES,
        max_wait: float = MAX_WAIT_S,
        ack_timeout: float = ACK_TIMEOUT_S,
    ) -> None:
        self._js = js
        self._max_wait = max_wait
        self._ack_timeout = ack_timeout
        self._timers: dict[str, asyncio.TimerHandle] = {}  # per subject: when gathered messages go regardless
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._pending: dict[str, _Pending] = {}
        self._inflight: dict[str, int] = {}  # batches per subject sent and not yet acknowledged
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, event: LifecycleEvent) -> asyncio.Future[PubAck]:
        """Queue ``event``; the returned future resolves with the ack of the message that stored it."""
        if tracing.enabled():
            return await _publish_single(self._js, event)
        return self.publish_encoded(event_subject(event.type.value), encode_sparse(event), event.id)

    def publish_encoded(self, subject: str, payload: bytes, msg_id: str) -> asyncio.Future[PubAck]:
        """Queue one encoded map for ``subject`` (``msg_id``: its de-duplication id when it goes alone);
        the returned future resolves with the ack of the message that stored it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAck] = loop.create_future()
        pending = self._pending.get(subject)
        if pending is None:
            pending = self._pending[subject] = _Pending()
        pending.payloads.append(payload)
        pending.ids.append(msg_id)
        pending.futures.append(future)
        pending.size += len(payload)
        if len(pending.payloads) >= self._max_events or pending.size >= self._max_bytes:
            self._send(subject)
        elif self._inflight.get(subject):
            if subject not in self._timers:
                self._timers[subject] = loop.call_later(self._max_wait, self._send, subject)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_idle)
        return future

    def _flush_idle(self) -> None:
        """Send what gathered for every subject that has no batch on its way."""
        self._scheduled = False
        for subject in [subject for subject in self._pending if not self._inflight.get(subject)]:
            self._send(subject)

    def _send(self, subject: str) -> None:
        timer = self._timers.pop(subject, None)
        if timer is not None:
            timer.cancel()
        pending = self._pending.pop(subject, None)
        if pending is None or not pending.payloads:
            return
        self._inflight[subject] = self._inflight.get(subject, 0) + 1
        task = asyncio.get_running_loop().create_task(self._publish(subject, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, subject: str, pending: _Pending) -> None:
        count = len(pending.payloads)
        if count == 1:
            payload, msg_id = pending.payloads[0], pending.ids[0]
        else:
            payload, msg_id = pack_batch(pending.payloads), batch_msg_id(pending.ids[0], pending.ids[-1], count)
        try:
            ack = await self._js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
        except asyncio.CancelledError:
            self._done(subject)
            for future in pending.futures:
                future.cancel()
            raise
        except Exception as exc:  # handed to every publisher of the batch
            self._done(subject)
            for future in pending.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        ack.add_done_callback(lambda done: self._settled(subject, pending.futures, done))
        expiry = asyncio.get_running_loop().call_later(self._ack_timeout, ack.cancel)
        ack.add_done_callback(lambda _: expiry.cancel())

    def _settled(self, subject: str, futures: list[asyncio.Future[PubAck]], done: asyncio.Future[PubAck]) -> None:
        self._done(subject)
        if done.cancelled():
            for future in futures:
                future.cancel()
            return
        exc = done.exception()
        for future in futures:
            if future.done():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(done.result())

    def _done(self, subject: str) -> None:
        left = self._inflight.get(subject, 1) - 1
        if left > 0:
            self._inflight[subject] = left
            return
        self._inflight.pop(subject, None)
        if subject in self._pending:  # what gathered meanwhile goes now
            self._send(subject)


async def _publish_single(js: JetStreamContext, event: LifecycleEvent) -> asyncio.Future[PubAck]:
    with tracing.span(f"publish {event.type.value}", kind=tracing.SpanKind.PRODUCER) as span:
        if span.is_recording():
            span.set_attributes({"messaging.system": "nats", "soulbox.event_id": event.id})
        headers = tracing.inject({"Nats-Msg-Id": event.id})
        return await js.publish_async(event_subject(event.type.value), encode_sparse(event), headers=headers)


_BATCHERS: weakref.WeakKeyDictionary[JetStreamContext, EventBatcher] = weakref.WeakKeyDictionary()


def batcher(js: JetStreamContext) -> EventBatcher:
    """The one batcher of ``js`` (every publisher of a process shares its connection's batches)."""
    found = _BATCHERS.get(js)
    if found is None:
        found = _BATCHERS[js] = EventBatcher(js)
    return found
