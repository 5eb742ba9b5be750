"""Prometheus metrics through the real consumer loop, the queue depth, /metrics."""

from __future__ import annotations

import asyncio

import httpx
import hypothesis
import hypothesis.strategies as st
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.fetch import BatchFetcher
from soulbox.core.schemas import EventType, Outcome
from soulbox.events import MetricsRecorder, MetricsServer, ensure_events_consumer
from soulbox.events.metrics import RecentIds

from .helpers import FAST, consuming, eventually, life, publish, settled


async def test_counters_and_histograms(js: JetStreamContext, buckets: Buckets) -> None:
    events = (
        life("inv-1", duration_ms=0.3, peak_memory_bytes=100_000)
        + life("inv-2", EventType.FAILED, duration_ms=40.0, peak_memory_bytes=5_000_000)
        + life("inv-3", EventType.TIMED_OUT, duration_ms=30_000.0, peak_memory_bytes=None)
        + life("inv-4", EventType.FAILED, outcome=Outcome.OUT_OF_MEMORY, duration_ms=2.0)
    )
    await publish(js, events)
    await publish(js, events[:4], msg_id_suffix=".again")  # redelivered: counted once
    metrics = MetricsRecorder()
    async with consuming(js, metrics, batch=5):
        await eventually(lambda: settled(js))
    value = metrics.registry.get_sample_value

    for step in ("accepted", "scheduled", "started"):
        assert value("soulbox_lifecycle_events_total", {"type": f"invocation.{step}"}) == 4
    assert value("soulbox_lifecycle_events_total", {"type": "invocation.completed"}) == 1
    assert value("soulbox_lifecycle_events_total", {"type": "invocation.failed"}) == 2
    assert value("soulbox_lifecycle_events_total", {"type": "invocation.timed_out"}) == 1

    assert value("soulbox_invocations_total", {"tier": "wasm", "outcome": "success"}) == 1
    assert value("soulbox_invocations_total", {"tier": "wasm", "outcome": "function_error"}) == 1
    assert value("soulbox_invocations_total", {"tier": "wasm", "outcome": "timeout"}) == 1
    assert value("soulbox_invocations_total", {"tier": "wasm", "outcome": "out_of_memory"}) == 1

    duration = {"tier": "wasm"}
    assert value("soulbox_invocation_duration_seconds_count", duration) == 4
    assert value("soulbox_invocation_duration_seconds_sum", duration) == pytest.approx(30.0423)
    assert value("soulbox_invocation_duration_seconds_bucket", {**duration, "le": "0.0005"}) == 1
    assert value("soulbox_invocation_duration_seconds_bucket", {**duration, "le": "0.05"}) == 3
    assert value("soulbox_invocation_duration_seconds_bucket", {**duration, "le": "30.0"}) == 4

    assert value("soulbox_invocation_peak_memory_bytes_count") == 3
    assert value("soulbox_invocation_peak_memory_bytes_sum") == 100_000 + 5_000_000 + 3 * 1024 * 1024
    assert value("soulbox_invocation_peak_memory_bytes_bucket", {"le": "262144.0"}) == 1


async def test_queue_depth_follows_the_scheduler_backlog(js: JetStreamContext, buckets: Buckets) -> None:
    for i in range(3):
        await js.publish(names.invocation_subject("acme"), b"req", headers={"Nats-Msg-Id": f"inv-{i}"})
    metrics = MetricsRecorder()
    assert await metrics.refresh_queue_depth(js) == 3

    stop = asyncio.Event()
    watcher = asyncio.create_task(metrics.watch_queue_depth(js, stop, interval=0.05))
    await eventually(lambda: _gauge_is(metrics, 3))
    sub = await js.pull_subscribe_bind(consumer=names.SCHEDULER_CONSUMER, stream=names.INVOCATIONS_STREAM)
    taken = await sub.fetch(2, timeout=2)
    for msg in taken:
        await msg.ack()
    await eventually(lambda: _gauge_is(metrics, 1))
    stop.set()
    await asyncio.wait_for(watcher, 5)
    await sub.unsubscribe()


async def test_event_consumer_lag_is_what_the_events_durable_has_not_acked(
    nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    await ensure_events_consumer(nc, js, FAST)
    for i in range(3):
        await js.publish(names.event_subject("completed"), b"ev", headers={"Nats-Msg-Id": f"ev-{i}"})
    metrics = MetricsRecorder()
    await metrics.refresh_queue_depth(js)
    lag = {"consumer": names.EVENTS_CONSUMER}
    assert metrics.registry.get_sample_value("soulbox_event_consumer_pending", lag) == 3
    fetcher = BatchFetcher(nc, stream=names.EVENTS_STREAM, durable=names.EVENTS_CONSUMER, group=names.EVENTS_CONSUMER)
    await fetcher.start()
    try:
        msgs = await fetcher.fetch(3, timeout=2)
        assert len(msgs) == 3 and fetcher.pin is not None
        await msgs[1].ack()  # AckPolicy.ALL: acknowledges the first as well
        await nc.flush()
        await metrics.refresh_queue_depth(js)
        assert metrics.registry.get_sample_value("soulbox_event_consumer_pending", lag) == 1
    finally:
        await fetcher.stop()


async def test_metrics_endpoint_serves_the_registry() -> None:
    metrics = MetricsRecorder()
    await metrics.record(life("inv-1"))
    server = MetricsServer(metrics.registry, host="127.0.0.1", port=0)
    async with server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        response = await client.get("/metrics")
        missing = await client.get("/nope")
        refused = await client.post("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'soulbox_invocations_total{outcome="success",tier="wasm"} 1.0' in response.text
    assert "soulbox_invocation_queue_depth 0.0" in response.text
    assert (missing.status_code, refused.status_code) == (404, 405)
    await server.close()  # closing twice is fine


def test_recent_ids_remember_the_last_capacity_and_forget_older_ones() -> None:
    seen = RecentIds(2)
    assert seen.add("a") and seen.add("b") and not seen.add("a")
    assert seen.add("c") and seen.add("d")  # two generations: {a, b} then {c, d}
    assert "c" in seen and "d" in seen and len(seen) <= 4
    assert seen.add("e") and seen.add("f")  # {e, f} pushes {a, b} out
    assert seen.add("a") and seen.add("b")  # forgotten, so new again


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(
    ids=st.lists(st.sampled_from([f"id-{i}" for i in range(30)]), max_size=300), capacity=st.integers(1, 10)
)
def test_recent_ids_never_forget_the_last_capacity_ids(ids: list[str], capacity: int) -> None:
    seen = RecentIds(capacity)
    history: list[str] = []
    for id_ in ids:
        recent = list(dict.fromkeys(reversed(history)))[:capacity]  # the last `capacity` distinct ids
        added = seen.add(id_)
        assert not added if id_ in recent else added or id_ in history  # older ones may be remembered still
        history.append(id_)
        assert all(r in seen for r in list(dict.fromkeys(reversed(history)))[:capacity])
        assert len(seen) <= 2 * capacity


async def _gauge_is(metrics: MetricsRecorder, depth: int) -> bool:
    return bool(metrics.registry.get_sample_value("soulbox_invocation_queue_depth") == depth)
