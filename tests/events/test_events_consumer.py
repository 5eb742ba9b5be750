"""The generic consumer loop against a real nats-server."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.eventbatch import EventBatcher
from soulbox.core.fetch import BatchFetcher
from soulbox.core.natsserver import NatsServer
from soulbox.core.schemas import EventType, LifecycleEvent
from soulbox.core.store import settle
from soulbox.events import EventConsumer, Recorder

from .helpers import Spy, consuming, event, eventually, explicit_durable, life, publish, settled


async def test_batch_is_recorded_in_order_then_acked(js: JetStreamContext, buckets: Buckets) -> None:
    events = life("inv-1") + life("inv-2", EventType.FAILED)
    await publish(js, events)
    spy = Spy()
    async with consuming(js, spy, "billing"):
        await eventually(lambda: _has(spy, len(events)))
        await eventually(lambda: settled(js, "billing"))
    assert spy.events == events
    assert isinstance(spy, Recorder)


async def test_failed_batch_is_nakked_and_redelivered(js: JetStreamContext, buckets: Buckets) -> None:
    events = life("inv-1")
    await publish(js, events)
    spy = Spy(fail=1)
    async with consuming(js, spy, "audit", retry_delay=0.2):
        await eventually(lambda: _has(spy, 2 * len(events)))
        await eventually(lambda: settled(js, "audit"))
    assert spy.batches[0] == events
    again = spy.events[len(events) :]  # the same events again, in whatever order the timers fire
    assert sorted(again, key=lambda e: e.id) == sorted(events, key=lambda e: e.id)
    info = await js.consumer_info(names.EVENTS_STREAM, "audit")
    assert info.num_redelivered == 0  # settled: nothing still waiting for redelivery


async def test_repeated_failures_back_off(js: JetStreamContext, buckets: Buckets) -> None:
    await publish(js, [event(EventType.COMPLETED, "inv-1")])
    calls: list[float] = []

    class Flaky:
        async def record(self, events: list[LifecycleEvent]) -> None:
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise RuntimeError("not yet")

    async with consuming(js, Flaky(), "billing", retry_delay=0.3):
        await eventually(lambda: settled(js, "billing"))
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.3  # first redelivery after retry_delay
    assert calls[2] - calls[1] >= 0.6  # then twice as long


async def test_undecodable_message_is_terminated_and_does_not_block(js: JetStreamContext, buckets: Buckets) -> None:
    await js.publish(names.event_subject("invocation.completed"), b"\xc1 not msgpack")
    await js.publish(names.event_subject("invocation.completed"), b"\x93\x01\x02\x03")  # a list, not a map
    good = event(EventType.COMPLETED, "inv-1")
    await publish(js, [good])
    spy = Spy()
    async with consuming(js, spy, "metrics", batch=1):
        await eventually(lambda: _has(spy, 1))
        await eventually(lambda: settled(js, "metrics"))
        await asyncio.sleep(0.5)  # a nak'd or unacked message would come back meanwhile
    assert spy.events == [good]
    assert len(spy.batches) == 1


async def test_other_durables_see_every_event(js: JetStreamContext, buckets: Buckets) -> None:
    events = life("inv-1")
    await publish(js, events)
    spies = {durable: Spy() for durable in ("billing", "audit", "metrics")}
    async with (
        consuming(js, spies["billing"], "billing"),
        consuming(js, spies["audit"], "audit"),
        consuming(js, spies["metrics"], "metrics"),
    ):
        for spy in spies.values():
            await eventually(functools.partial(_has, spy, len(events)))
    assert all(spy.events == events for spy in spies.values())


async def test_stop_is_prompt_when_idle(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    await explicit_durable(js, "billing")
    stop = asyncio.Event()
    consumer = EventConsumer(nc, Spy(), durable="billing", batch=16, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 1.5


async def test_survives_a_nats_restart(
    nats_server: NatsServer, nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    spy = Spy()
    async with consuming(js, spy, "billing"):
        await publish(js, life("before"))
        await eventually(lambda: _has(spy, 4))
        await asyncio.to_thread(nats_server.stop)
        await asyncio.sleep(1.0)  # fetches fail or time out while the server is down
        await asyncio.to_thread(nats_server.start)
        await eventually(_connected(nc), timeout=15)
        await publish(js, life("after"))
        await eventually(lambda: _has(spy, 8), timeout=15)
    assert [e.invocation_id for e in spy.events][-4:] == ["after"] * 4


async def _has(spy: Spy, count: int) -> bool:
    return len(spy.events) >= count


def _connected(nc: NATS) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(nc.is_connected)

    return check


async def test_fetcher_returns_early_and_keeps_what_arrives_later(
    nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    await explicit_durable(js, "billing")
    fetcher = BatchFetcher(nc, stream=names.EVENTS_STREAM, durable="billing")
    await fetcher.start()
    try:
        started = time.monotonic()
        assert await fetcher.fetch(10, timeout=0.3) == []
        assert time.monotonic() - started < 1.0

        async def trickle() -> None:
            for e in life("inv-1"):
                await asyncio.sleep(0.1)
                await publish(js, [e])

        task = asyncio.create_task(trickle())
        first = await fetcher.fetch(10, timeout=5.0)  # returns at the first event, the long poll stays open
        assert len(first) == 1
        await task
        await asyncio.sleep(0.2)
        rest = await fetcher.fetch(10, timeout=1.0)
        received = first + rest
        assert [m.metadata.sequence.stream for m in received] == [1, 2, 3, 4]
        assert all(m.metadata.num_delivered == 1 for m in received)
        for msg in received:
            await msg.ack()
    finally:
        await fetcher.stop()


async def test_fetcher_gathers_a_trickle_into_bursts(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    """A consumer that keeps up pulls what gathered meanwhile, not one event per fetch."""
    await explicit_durable(js, "metrics")
    fetcher = BatchFetcher(nc, stream=names.EVENTS_STREAM, durable="metrics")
    await fetcher.start()
    events = [e for i in range(10) for e in life(f"inv-{i}")]

    async def trickle() -> None:
        for e in events:
            await publish(js, [e])
            await asyncio.sleep(0.01)

    task = asyncio.create_task(trickle())
    batches: list[int] = []
    try:
        while sum(batches) < len(events):
            msgs = await fetcher.fetch(100, timeout=2.0, linger=0.1)
            assert msgs, "the trickle stopped arriving"
            batches.append(len(msgs))
            for msg in msgs:
                await msg.ack()
    finally:
        await task
        await fetcher.stop()
    assert sum(batches) == len(events)
    assert len(batches) <= len(events) // 3, batches


async def test_fetcher_stop_hands_buffered_messages_back(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    await explicit_durable(js, "audit")
    fetcher = BatchFetcher(nc, stream=names.EVENTS_STREAM, durable="audit")
    await fetcher.start()
    events = life("inv-1")

    async def later() -> None:
        await asyncio.sleep(0.2)
        await publish(js, events[:1])
        await asyncio.sleep(0.2)
        await publish(js, events[1:])

    task = asyncio.create_task(later())
    first = await fetcher.fetch(10, timeout=5.0)  # the long poll stays open for the rest
    await task
    await eventually(lambda: _delivered(js, "audit", len(events)))
    assert [m.metadata.sequence.stream for m in first] == [1]
    await first[0].ack()
    await fetcher.stop()  # three delivered, buffered, never handed out: nak'd, not left to the ack wait

    again = BatchFetcher(nc, stream=names.EVENTS_STREAM, durable="audit")
    await again.start()
    try:
        started = time.monotonic()
        rest = await again.fetch(10, timeout=5.0)
        assert time.monotonic() - started < 2.0
        assert sorted(m.metadata.sequence.stream for m in rest) == [2, 3, 4]
        assert all(m.metadata.num_delivered == 2 for m in rest)
        for msg in rest:
            await msg.ack()
    finally:
        await again.stop()


async def _delivered(js: JetStreamContext, durable: str, count: int) -> bool:
    info = await js.consumer_info(names.EVENTS_STREAM, durable)
    return bool(info.delivered.stream_seq >= count)


async def test_batch_counts_events_when_messages_carry_several(js: JetStreamContext, buckets: Buckets) -> None:
    producer = EventBatcher(js, max_events=8)

    async def publish_batched(events: list[LifecycleEvent]) -> None:
        await settle([await producer.publish(e) for e in events])

    first = [event(EventType.COMPLETED, f"inv-{n}") for n in range(40)]
    await publish_batched(first)
    spy = Spy()
    async with consuming(js, spy, "billing", batch=8):
        await eventually(lambda: _has(spy, len(first)))
        seen = len(spy.batches)
        later = [event(EventType.COMPLETED, f"inv-{n}") for n in range(40, 200)]
        await publish_batched(later)
        await eventually(lambda: _has(spy, len(first) + len(later)))
        await eventually(lambda: settled(js, "billing"))
    assert sorted(e.id for e in spy.events) == sorted(e.id for e in first + later)
    # once it has seen 8 events a message, it asks for one message (8 events) at a time, not 8 (64)
    assert max(len(batch) for batch in spy.batches[seen + 1 :]) <= 16
