"""The events durable: one ack per batch, one process served at a time, migration from the old durables."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from soulbox.core import names
from soulbox.core.bus import Buckets, connect
from soulbox.core.schemas import LifecycleEvent
from soulbox.core.settings import EventsSettings, Settings
from soulbox.events import ensure_events_consumer

from .helpers import FAST, Spy, consuming, events_consumer, eventually, life, publish, settled


async def _info(js: JetStreamContext) -> api.ConsumerInfo:
    return await js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)


async def test_legacy_durables_are_migrated_from_the_lowest_ack_floor(
    nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    events = [e for i in range(5) for e in life(f"inv-{i}")]  # stream sequences 1..20
    await publish(js, events)
    floors = {"billing": 12, "audit": 7, "metrics": 20}
    for durable, floor in floors.items():  # the old design's durables, each acked up to its floor
        config = api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT)
        await js.add_consumer(names.EVENTS_STREAM, config)
        sub = await js.pull_subscribe_bind(durable, stream=names.EVENTS_STREAM)
        for msg in await sub.fetch(floor, timeout=2):
            await msg.ack()
        await sub.unsubscribe()
    await nc.flush()

    await ensure_events_consumer(nc, js, FAST)
    info = await _info(js)
    assert info.config.opt_start_seq == 8 and info.num_pending == 13  # after audit's floor: nothing unrecorded
    assert str(info.config.ack_policy) in ("all", "AckPolicy.ALL")
    for durable in floors:
        try:
            await js.consumer_info(names.EVENTS_STREAM, durable)
        except NotFoundError:
            continue
        raise AssertionError(f"{durable} was not deleted")

    spy = Spy()
    async with consuming(js, spy):
        await eventually(lambda: settled(js))
    assert spy.events == events[7:]

    # Starting again converges the timeouts and keeps the position.
    await ensure_events_consumer(nc, js, EventsSettings(ack_wait_s=5.0, pin_timeout_s=9.0))
    info = await _info(js)
    assert (info.config.ack_wait, info.num_pending, info.ack_floor.stream_seq) == (5.0, 0, 20)


async def test_a_fresh_stream_starts_at_the_first_event(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    await publish(js, life("inv-1"))
    await ensure_events_consumer(nc, js, FAST)
    await ensure_events_consumer(nc, js, FAST)  # a second events process starting
    assert (await _info(js)).num_pending == 4


async def test_pin_timeout_must_outlast_the_ack_wait(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    try:
        await ensure_events_consumer(nc, js, EventsSettings(ack_wait_s=10.0, pin_timeout_s=5.0))
    except ValueError as exc:
        assert "pin_timeout_s" in str(exc)
    else:
        raise AssertionError("accepted a pin timeout shorter than the ack wait")


async def test_one_ack_settles_a_batch(js: JetStreamContext, buckets: Buckets) -> None:
    events = [e for i in range(10) for e in life(f"inv-{i}")]
    await publish(js, events)
    spy = Spy()
    async with consuming(js, spy, batch=40):
        await eventually(lambda: settled(js))
    assert spy.events == events
    info = await _info(js)
    assert (info.ack_floor.stream_seq, info.num_redelivered) == (40, 0)


async def test_an_undecodable_event_is_skipped_and_covered_by_the_ack(js: JetStreamContext, buckets: Buckets) -> None:
    await js.publish(names.event_subject("invocation.completed"), b"\xc1 not msgpack")
    good = life("inv-1")
    await publish(js, good)
    spy = Spy()
    async with consuming(js, spy, batch=2):
        await eventually(lambda: settled(js))
        await asyncio.sleep(2.5)  # past the ack wait: nothing comes back
    assert spy.events == good
    info = await _info(js)
    assert (info.ack_floor.stream_seq, info.num_redelivered, info.num_ack_pending) == (5, 0, 0)


async def test_a_failed_batch_is_retried_in_place_and_nothing_after_it_is_acked(
    js: JetStreamContext, buckets: Buckets
) -> None:
    first, second = life("inv-1"), life("inv-2")
    await publish(js, first + second)
    floors: list[int] = []

    class FailTwice(Spy):
        """Fails the first batch twice."""

        async def record(self, events: list[LifecycleEvent]) -> None:
            await js._nc.flush()  # the acks sent so far have reached the server
            floors.append((await _info(js)).ack_floor.stream_seq)
            await super().record(events)
            if events == first and self.batches.count(first) <= 2:
                raise RuntimeError("recorder failure (injected)")

    spy = FailTwice()
    async with consuming(js, spy, batch=4, retry_delay=0.1):
        await eventually(lambda: settled(js))
    # The same batch until it is recorded; the next one, recorded meanwhile, waits for it.
    assert spy.batches.count(first) == 3 and spy.batches.count(second) == 1 and len(spy.batches) == 4
    assert floors == [0, 0, 0, 0]  # no ack moved past the failing batch
    assert (await _info(js)).ack_floor.stream_seq == 8


async def test_one_process_is_served_and_a_standby_takes_over_when_it_dies(
    settings: Settings, js: JetStreamContext, buckets: Buckets
) -> None:
    """The pinned process takes every event; killed holding a batch, its standby gets that batch
    (redelivered) and the rest, and the durable settles: nothing acked unrecorded."""
    await ensure_events_consumer(js._nc, js, FAST)
    stuck = asyncio.Event()

    class Hangs(Spy):
        async def record(self, events: list[LifecycleEvent]) -> None:
            await super().record(events)
            # inv-1's events may come in one batch or two: hang on the first one that holds inv-2's
            if not stuck.is_set() and any(e.invocation_id == "inv-2" for e in events):
                stuck.set()
                await asyncio.Event().wait()  # never returns: the batch stays unacknowledged

    doomed_nc = await connect(settings, name="doomed")
    active = Hangs()
    doomed = events_consumer(doomed_nc.jetstream(), active, batch=4)
    standby = Spy()
    stop = asyncio.Event()
    doomed_task = asyncio.create_task(doomed.run(asyncio.Event()))
    await publish(js, life("inv-1"))
    await eventually(lambda: _has(active, 4))  # pinned first
    standby_task = asyncio.create_task(events_consumer(js, standby, batch=4).run(stop))
    await publish(js, life("inv-2") + life("inv-3"))
    await asyncio.wait_for(stuck.wait(), 10)
    await asyncio.sleep(0.5)
    assert standby.events == []  # pinned to the other one

    doomed_task.cancel()
    await doomed_nc.close()  # dies holding inv-2's events, unacknowledged
    await eventually(lambda: _has(standby, 8), timeout=20)  # after the pin timeout
    await eventually(lambda: settled(js), timeout=10)
    stop.set()
    await asyncio.wait_for(standby_task, 10)
    assert {e.invocation_id for e in standby.events} == {"inv-2", "inv-3"}
    # It may have recorded inv-3's events as well (while inv-2's hung) but could not ack them first.
    seen = [e.invocation_id for e in active.events]
    assert seen[:4] == ["inv-1"] * 4 and "inv-2" in seen


async def test_a_clean_stop_hands_the_pin_over_at_once(js: JetStreamContext, buckets: Buckets) -> None:
    await ensure_events_consumer(js._nc, js, EventsSettings(ack_wait_s=30.0, pin_timeout_s=60.0))
    first, second = Spy(), Spy()
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    task_first = asyncio.create_task(events_consumer(js, first).run(stop_first))
    await publish(js, life("inv-1"))
    await eventually(lambda: _has(first, 4))
    task_second = asyncio.create_task(events_consumer(js, second).run(stop_second))
    await asyncio.sleep(0.3)
    stop_first.set()
    await asyncio.wait_for(task_first, 10)
    await publish(js, life("inv-2"))
    await eventually(lambda: _has(second, 4), timeout=5)  # well within the 60 s pin timeout
    stop_second.set()
    await asyncio.wait_for(task_second, 10)
    assert [e.invocation_id for e in second.events] == ["inv-2"] * 4


async def _has(spy: Spy, count: int) -> bool:
    return len(spy.events) >= count
