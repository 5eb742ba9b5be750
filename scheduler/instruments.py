"""The scheduler's Prometheus metrics, on a registry of their own.

    soulbox_scheduler_dispatch_seconds{tier}           from fetching an invocation to its worker's answer
    soulbox_scheduler_dispatches_total{tier,result}    dispatch attempts: accepted, refused, lost, no_worker
    soulbox_scheduler_live_workers                     workers with a fresh heartbeat

Served at ``/metrics`` on ``scheduler.metrics_port`` when that is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from soulbox.core.schemas import Tier

DISPATCH_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
"""Seconds, 1 ms .. 15 min (the longest function timeout)."""

DispatchResult = Literal["accepted", "refused", "lost", "no_worker"]


class SchedulerInstruments:
    """Dispatch counters and latency; ``live_workers`` is read from ``live`` at each scrape."""

    def __init__(self, live: Callable[[], int], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.dispatch_seconds = Histogram(
            "soulbox_scheduler_dispatch_seconds",
            "Time from fetching an invocation to the answer of the worker that ran it.",
            ["tier"],
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        self.dispatches = Counter(
            "soulbox_scheduler_dispatches",
            "Dispatch attempts, by tier and result (accepted, refused by the worker, lost, no worker).",
            ["tier", "result"],
            registry=self.registry,
        )
        self.live_workers = Gauge(
            "soulbox_scheduler_live_workers", "Workers with a fresh heartbeat.", registry=self.registry
        )
        self.live_workers.set_function(lambda: float(live()))

    def dispatched(self, tier: Tier, result: DispatchResult) -> None:
        self.dispatches.labels(tier.value, result).inc()

    def answered(self, tier: Tier, seconds: float) -> None:
        self.dispatch_seconds.labels(tier.value).observe(seconds)
