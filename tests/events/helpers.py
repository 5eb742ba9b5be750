"""Building, publishing and consuming lifecycle events in the events tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.ledger import AuditRecord
from soulbox.core.natsserver import free_port
from soulbox.core.schemas import EventType, LifecycleEvent, Outcome, Tier
from soulbox.core.settings import EventsSettings, Settings
from soulbox.events import EventConsumer, Recorder, ensure_events_consumer
from soulbox.events.auditblocks import position, records_of
from soulbox.events.streamread import read_stream

FAST = EventsSettings(ack_wait_s=2.0, pin_timeout_s=3.0)
"""The events durable with short timeouts: a killed process's batch and pin come back within seconds."""

AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)

TERMINAL_OUTCOMES = {
    EventType.COMPLETED: Outcome.SUCCESS,
    EventType.FAILED: Outcome.FUNCTION_ERROR,
    EventType.TIMED_OUT: Outcome.TIMEOUT,
}


def event(
    type_: EventType,
    invocation_id: str,
    *,
    tenant: str = "acme",
    function: str = "resize",
    at: datetime = AT,
    duration_ms: float | None = 12.3,
    memory_limit_mb: int | None = 128,
    peak_memory_bytes: int | None = 3 * 1024 * 1024,
    outcome: Outcome | None = None,
) -> LifecycleEvent:
    """A lifecycle event; terminal ones carry an outcome, duration and memory."""
    terminal = type_ in TERMINAL_OUTCOMES
    return LifecycleEvent(
        id=f"{invocation_id}.{type_.value.split('.', 1)[1]}",
        type=type_,
        invocation_id=invocation_id,
        tenant=tenant,
        function=function,
        tier=Tier.WASM,
        worker="w-1" if type_ != EventType.ACCEPTED else None,
        at=at,
        outcome=(outcome or TERMINAL_OUTCOMES[type_]) if terminal else None,
        duration_ms=duration_ms if terminal else None,
        peak_memory_bytes=peak_memory_bytes if terminal else None,
        memory_limit_mb=memory_limit_mb if terminal else None,
    )


def life(invocation_id: str, end: EventType = EventType.COMPLETED, **fields: object) -> list[LifecycleEvent]:
    """Every event of one invocation, from accepted to ``end``."""
    steps = [EventType.ACCEPTED, EventType.SCHEDULED, EventType.STARTED, end]
    return [event(step, invocation_id, **fields) for step in steps]  # type: ignore[arg-type]


async def publish(js: JetStreamContext, events: list[LifecycleEvent], *, msg_id_suffix: str = "") -> None:
    """Publish events as the other components do (pipelined); a suffix defeats de-duplication."""
    futures = [
        await js.publish_async(
            names.event_subject(e.type.value), encode(e), headers={"Nats-Msg-Id": e.id + msg_id_suffix}
        )
        for e in events
    ]
    acks = await asyncio.gather(*futures)
    assert not any(ack.duplicate for ack in acks)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def process_settings(settings: Settings) -> Settings:
    """``settings`` for an events process run in a test: the FAST timeouts and a free /metrics port."""
    events = FAST.model_copy(update={"metrics_port": free_port()})
    return settings.model_copy(update={"events": events})


async def explicit_durable(js: JetStreamContext, durable: str) -> None:
    """A durable on the events stream acknowledged message by message (the loop's other mode)."""
    try:
        await js.consumer_info(names.EVENTS_STREAM, durable)
    except NotFoundError:
        config = api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20_000)
        await js.add_consumer(names.EVENTS_STREAM, config)


def events_consumer(
    js: JetStreamContext, recorder: Recorder, *, batch: int = 64, retry_delay: float = 0.2
) -> EventConsumer:
    """The loop as the events process runs it: the events durable, pinned, one ack per batch."""
    return EventConsumer(
        js._nc,
        recorder,
        durable=names.EVENTS_CONSUMER,
        batch=batch,
        group=names.EVENTS_CONSUMER,
        ack_all=True,
        fetch_timeout=0.2,
        retry_delay=retry_delay,
    )


@asynccontextmanager
async def consuming(
    js: JetStreamContext,
    recorder: Recorder,
    durable: str = names.EVENTS_CONSUMER,
    *,
    batch: int = 64,
    retry_delay: float = 0.2,
) -> AsyncIterator[EventConsumer]:
    """The real consumer loop running ``recorder`` in the background; stopped on exit.

    On the events durable (the default) as the events process runs it; on any other name, a durable
    acknowledged message by message."""
    if durable == names.EVENTS_CONSUMER:
        await ensure_events_consumer(js._nc, js, FAST)
        consumer = events_consumer(js, recorder, batch=batch, retry_delay=retry_delay)
    else:
        await explicit_durable(js, durable)
        consumer = EventConsumer(
            js._nc, recorder, durable=durable, batch=batch, fetch_timeout=0.2, retry_delay=retry_delay
        )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class Spy:
    """A recorder that keeps every batch; optionally fails the first ``fail`` calls,
    after passing the batch on to ``inner`` (so a failure can follow real writes)."""

    def __init__(self, inner: Recorder | None = None, *, fail: int = 0) -> None:
        self.inner = inner
        self.fail = fail
        self.batches: list[list[LifecycleEvent]] = []

    @property
    def events(self) -> list[LifecycleEvent]:
        return [e for batch in self.batches for e in batch]

    async def record(self, events: list[LifecycleEvent]) -> None:
        self.batches.append(list(events))
        if self.inner is not None:
            await self.inner.record(events)
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("recorder failure (injected)")


async def settled(js: JetStreamContext, durable: str = names.EVENTS_CONSUMER) -> bool:
    """Nothing pending or waiting for an ack on ``durable``."""
    info = await js.consumer_info(names.EVENTS_STREAM, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def audit_records(js: JetStreamContext, stream: str = names.AUDIT_STREAM) -> list[tuple[int, AuditRecord]]:
    """Every record of the chained audit log with its position, in order (messages hold one or a block)."""
    return [
        (position(msg.metadata.sequence.stream, index), record)
        async for msg in read_stream(js, stream)
        for index, record in enumerate(records_of(msg.data))
    ]
