"""Prometheus metrics from lifecycle events, on a registry of their own.

    soulbox_lifecycle_events_total{type}             every event
    soulbox_invocations_total{tier,outcome}          terminal events
    soulbox_invocation_duration_seconds{tier}        terminal events with a duration
    soulbox_invocation_peak_memory_bytes             terminal events with a peak
    soulbox_invocation_queue_depth                   scheduler backlog, polled
    soulbox_event_consumer_pending{consumer}         event messages the events durable has not acked, polled

Counters cannot be rewritten like a key, so redelivery is handled by
remembering the ids of recently counted events (a bounded window): an event
redelivered within the window is not counted again. After a restart every
counter starts from zero anyway, which Prometheus' ``rate()`` expects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter as CountOf
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from soulbox.core import names
from soulbox.core.logging import get_logger
from soulbox.core.schemas import LifecycleEvent

from .billing import TERMINAL_EVENTS

log = get_logger(__name__)

DURATION_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds, 0.1 ms .. 60 s."""

MEMORY_BUCKETS: Final = tuple(float(2**n) for n in range(16, 35, 2))
"""Bytes, one wasm page (64 KiB) .. 16 GiB, by powers of four."""

UNKNOWN: Final = "unknown"


class RecentIds:
    """A bounded set of recently added ids: the last ``capacity`` at least, twice as many at most.

    Two generations of plain sets: ids go into the current one; a full current
    one becomes the previous one (the one before is forgotten whole). An id seen
    again moves into the current generation. One set operation or two per id,
    where an ordered map paid for keeping exact recency.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def add(self, id_: str) -> bool:
        """Remember ``id_``; False if it was already remembered."""
        if id_ in self._current:
            return False
        known = id_ in self._previous
        if len(self._current) >= self._capacity:
            self._previous, self._current = self._current, set()
        self._current.add(id_)
        return not known

    def add_all(self, ids: list[str]) -> None:
        for id_ in ids:
            self.add(id_)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._current or id_ in self._previous

    def __len__(self) -> int:
        return len(self._current | self._previous)


class MetricsRecorder:
    """Counts lifecycle events into Prometheus metrics on ``self.registry``."""

    def __init__(self, *, registry: CollectorRegistry | None = None, dedupe_window: int = 100_000) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._seen = RecentIds(dedupe_window)
        self.events = Counter(
            "soulbox_lifecycle_events", "Lifecycle events seen, by type.", ["type"], registry=self.registry
        )
        self.invocations = Counter(
            "soulbox_invocations",
            "Finished invocations, by tier and outcome.",
            ["tier", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "soulbox_invocation_duration_seconds",
            "Run time of finished invocations.",
            ["tier"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.peak_memory = Histogram(
            "soulbox_invocation_peak_memory_bytes",
            "Peak memory of finished invocations.",
            buckets=MEMORY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "soulbox_invocation_queue_depth",
            "Invocations waiting for or held by the scheduler (pending + ack pending).",
            registry=self.registry,
        )
        self.consumer_pending = Gauge(
            "soulbox_event_consumer_pending",
            "Lifecycle event messages (one event or a producer's batch each) not yet processed by each event "
            "consumer (pending + ack pending): its lag.",
            ["consumer"],
            registry=self.registry,
        )

    async def record(self, events: list[LifecycleEvent]) -> None:
        by_type: CountOf[str] = CountOf()
        by_outcome: CountOf[tuple[str, str]] = CountOf()  # a counter's labels looked up once per batch
        durations: dict[str, Histogram] = {}  # and a histogram's
        for event in events:
            if not self._seen.add(event.id):
                continue
            by_type[event.type] += 1  # enum members are their values (StrEnum), as labels too
            if event.type not in TERMINAL_EVENTS:
                continue
            tier = event.tier or UNKNOWN
            outcome = event.outcome or UNKNOWN
            by_outcome[tier, outcome] += 1
            if event.duration_ms is not None:
                if (duration := durations.get(tier)) is None:
                    duration = durations[tier] = self.duration.labels(tier=tier)
                duration.observe(event.duration_ms / 1000)
            if event.peak_memory_bytes is not None:
                self.peak_memory.observe(event.peak_memory_bytes)
        for type_, count in by_type.items():
            self.events.labels(type=type_).inc(count)
        for (tier, outcome), count in by_outcome.items():
            self.invocations.labels(tier=tier, outcome=outcome).inc(count)

    async def refresh_queue_depth(self, js: JetStreamContext) -> int:
        """Read the scheduler consumer's backlog (and each event consumer's lag) once; the backlog is returned."""
        info = await js.consumer_info(names.INVOCATIONS_STREAM, names.SCHEDULER_CONSUMER)
        depth = (info.num_pending or 0) + (info.num_ack_pending or 0)
        self.queue_depth.set(depth)
        try:
            lag = await js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        except NotFoundError:  # no events process has run against this stream yet
            return depth
        self.consumer_pending.labels(names.EVENTS_CONSUMER).set((lag.num_pending or 0) + (lag.num_ack_pending or 0))
        return depth

    async def watch_queue_depth(self, js: JetStreamContext, stop: asyncio.Event, *, interval: float = 1.0) -> None:
        """Refresh the queue depth gauge every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.refresh_queue_depth(js)
            except (NatsError, OSError) as exc:  # e.g. reconnecting: keep the last value
                log.warning("metrics.queue_depth_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
