"""Lifecycle events published by group commit, against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import get_args

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.eventbatch import EventBatcher, batcher, decode_events, pack_batch, unpack_events
from soulbox.core.natsserver import NatsServer
from soulbox.core.schemas import EventType, LifecycleEvent
from soulbox.core.store import publish_event, settle
from soulbox.events import EventConsumer

from ..events.helpers import Spy, event, eventually, explicit_durable, life


async def stored(js: JetStreamContext) -> list[tuple[str, str | None, list[LifecycleEvent]]]:
    """Every message of the events stream: (subject, Nats-Msg-Id, its events)."""
    info = await js.stream_info(names.EVENTS_STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(names.EVENTS_STREAM, seq)
        found.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id"), decode_events(msg.data)))
    return found


async def test_a_lone_event_goes_alone_in_the_single_event_format(js: JetStreamContext, buckets: Buckets) -> None:
    one = event(EventType.COMPLETED, "inv-1")
    ack = await settle([await publish_event(js, one)])
    assert ack[0].seq == 1
    msg = await js.get_msg(names.EVENTS_STREAM, 1)
    assert msg.subject == "sb.events.invocation.completed"
    assert (msg.headers or {}).get("Nats-Msg-Id") == one.id
    fields = msgpack.unpackb(msg.data, timestamp=3)
    assert isinstance(fields, dict)  # a map, as before batching
    assert decode_events(msg.data) == [one]
    # a field that is None is left out: readers take it as None
    assert fields == one.model_dump(exclude_none=True) and "error" not in fields and one.error is None


def test_every_event_field_that_may_be_none_defaults_to_none() -> None:
    """What makes leaving None fields off the wire lossless: an absent field reads as None."""
    nullable = {
        name: info for name, info in LifecycleEvent.model_fields.items() if type(None) in get_args(info.annotation)
    }
    assert {"error", "tier", "outcome", "sandbox_id"} <= nullable.keys()
    for name, info in nullable.items():
        assert not info.is_required() and info.default is None, name


async def test_events_of_one_turn_go_as_one_message_per_type(js: JetStreamContext, buckets: Buckets) -> None:
    events = life("inv-1") + life("inv-2") + life("inv-3")
    futures = [await publish_event(js, e) for e in events]  # no await that yields in between
    acks = await settle(futures)
    messages = await stored(js)
    assert sorted(subject for subject, _, _ in messages) == sorted(
        names.event_subject(t.value)
        for t in (EventType.ACCEPTED, EventType.SCHEDULED, EventType.STARTED, EventType.COMPLETED)
    )
    for subject, msg_id, batch in messages:
        assert [e.invocation_id for e in batch] == ["inv-1", "inv-2", "inv-3"]
        assert all(names.event_subject(e.type.value) == subject for e in batch)
        assert msg_id == f"batch.{batch[0].id}.{batch[-1].id}.3"
    # every event's future has the ack of the message that stored it
    by_id = {e.id: seq for seq, (_, _, batch) in enumerate(messages, start=1) for e in batch}
    assert [ack.seq for ack in acks] == [by_id[e.id] for e in events]


async def test_events_gather_while_a_batch_is_on_its_way(js: JetStreamContext, buckets: Buckets) -> None:
    first = await publish_event(js, event(EventType.STARTED, "inv-0"))
    await asyncio.sleep(0)  # the first one is sent (its ack not yet back)
    later = [await publish_event(js, event(EventType.STARTED, f"inv-{n}")) for n in range(1, 6)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    more = [await publish_event(js, event(EventType.STARTED, f"inv-{n}")) for n in range(6, 9)]
    await settle([first, *later, *more])
    sizes = [len(batch) for _, _, batch in await stored(js)]
    assert sum(sizes) == 9
    assert sizes[0] == 1
    assert len(sizes) <= 3  # the eight later ones did not go one by one


async def test_a_full_batch_goes_at_once_and_batches_are_bounded(js: JetStreamContext, buckets: Buckets) -> None:
    small = EventBatcher(js, max_events=10)
    futures = [await small.publish(event(EventType.COMPLETED, f"inv-{n}")) for n in range(25)]
    await settle(futures)
    sizes = [len(batch) for _, _, batch in await stored(js)]
    assert sizes == [10, 10, 5]


async def test_every_process_publisher_shares_one_batcher_per_context(js: JetStreamContext) -> None:
    assert batcher(js) is batcher(js)


async def test_a_failed_publish_fails_every_event_of_its_batch(js: JetStreamContext, buckets: Buckets) -> None:
    await js.delete_stream(names.EVENTS_STREAM)  # nobody stores sb.events.> now: no responders
    futures = [await publish_event(js, event(EventType.COMPLETED, f"inv-{n}")) for n in range(3)]
    done, _ = await asyncio.wait(futures, timeout=10)
    assert len(done) == 3
    assert all(f.exception() is not None for f in futures)


async def test_the_consumer_records_every_event_of_a_batch_and_skips_only_a_bad_one(
    nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    good = life("inv-1")
    payload = pack_batch([msgpack.packb(e.model_dump(mode="python"), datetime=True) for e in good])
    bad_item = msgpack.packb({"v": 1, "type": "invocation.completed"})  # required fields missing
    mixed = pack_batch([msgpack.packb(good[0].model_dump(mode="python"), datetime=True), bad_item])
    await js.publish(names.event_subject("invocation.accepted"), payload)
    await js.publish(names.event_subject("invocation.accepted"), mixed)
    spy = Spy()
    await explicit_durable(js, "billing")
    consumer = EventConsumer(nc, spy, durable="billing", batch=10)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: _count(spy, len(good) + 1))
        await eventually(lambda: _acked(js, "billing", 2))
    finally:
        stop.set()
        await task
    assert spy.events == [*good, good[0]]


async def _count(spy: Spy, n: int) -> bool:
    return len(spy.events) >= n


async def _acked(js: JetStreamContext, durable: str, n: int) -> bool:
    info = await js.consumer_info(names.EVENTS_STREAM, durable)
    return info.ack_floor is not None and info.ack_floor.stream_seq >= n


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1), max_size=3), max_size=40))
def test_a_batch_is_the_msgpack_array_of_its_events(items: list[dict[str, int]]) -> None:
    encoded = [msgpack.packb(item) for item in items]
    assert pack_batch(encoded) == msgpack.packb(items)
    assert unpack_events(pack_batch(encoded)) == items


@pytest.mark.parametrize("count", [15, 16, 65535, 65536])
def test_batch_headers_at_msgpack_size_boundaries(count: int) -> None:
    items = [{"n": 1}] * count
    assert pack_batch([msgpack.packb(item) for item in items]) == msgpack.packb(items)


async def test_a_batch_whose_ack_is_lost_fails_and_the_next_ones_still_go(
    nats_server: NatsServer, nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    producer = EventBatcher(js, ack_timeout=1.0)
    await asyncio.to_thread(nats_server.stop)
    lost = [await producer.publish(event(EventType.COMPLETED, f"inv-{n}")) for n in range(3)]
    done, _ = await asyncio.wait(lost, timeout=10)  # nats-py would leave these pending for ever
    assert len(done) == 3
    assert all(f.cancelled() for f in lost)  # cancelled by the ack timeout (publishing itself raised nothing)
    await asyncio.to_thread(nats_server.start)
    await eventually(lambda: _connected(nc), timeout=15)
    again = [await producer.publish(event(EventType.COMPLETED, f"inv-{n}")) for n in range(3)]
    acks = await settle(again, timeout=10)
    assert len({ack.seq for ack in acks}) == 1  # one batch, stored
    info = await js.stream_info(names.EVENTS_STREAM)
    assert info.state.messages >= 1


async def _connected(nc: NATS) -> bool:
    return nc.is_connected


async def test_events_behind_a_batch_whose_ack_does_not_come_go_after_a_short_wait(
    nats_server: NatsServer, nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    producer = EventBatcher(js, max_wait=0.05, ack_timeout=30.0)
    await js.delete_stream(names.EVENTS_STREAM)
    await js.add_stream(name="SLOW", subjects=["sb.events.>"], no_ack=True)  # stores, never answers
    first = await producer.publish(event(EventType.COMPLETED, "inv-0"))
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    await producer.publish(event(EventType.COMPLETED, "inv-1"))
    await eventually(lambda: _stored(js, "SLOW", 2), timeout=5, interval=0.01)
    assert asyncio.get_running_loop().time() - started < 1.0  # not held until the first one's ack timeout
    assert not first.done()


async def _stored(js: JetStreamContext, stream: str, n: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= n
