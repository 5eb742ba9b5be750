"""A worker's Prometheus metrics, on a registry of their own.

    soulbox_worker_invocations_total{tier,outcome}        finished attempts
    soulbox_worker_run_seconds{tier}                      guest run time of finished attempts
    soulbox_worker_in_flight                              invocations running now
    soulbox_worker_sandboxes{state}                       sandboxes handed out (in_use) and pre-started (pooled)
    soulbox_worker_sandbox_starts_total{template,kind}    sandboxes handed out: warm (from the pool) or cold
    soulbox_worker_sandbox_start_seconds{template}        time to start one sandbox (pool fills included)

Served at ``/metrics`` on ``worker.metrics_port`` when that is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from soulbox.core.schemas import Outcome, Tier

RUN_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
"""Seconds, 0.1 ms .. 15 min."""

START_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
"""Seconds: a sandbox's daemons start in well under a second, a first template build takes longer."""

StartKind = Literal["warm", "cold"]


class WorkerInstruments:
    """Invocation and sandbox metrics of one worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.invocations = Counter(
            "soulbox_worker_invocations",
            "Invocation attempts this worker finished, by tier and outcome.",
            ["tier", "outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "soulbox_worker_run_seconds",
            "Guest run time of finished invocation attempts.",
            ["tier"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("soulbox_worker_in_flight", "Invocations running now.", registry=self.registry)
        self.sandboxes = Gauge(
            "soulbox_worker_sandboxes",
            "Sandboxes held, by state: in_use (handed out) or pooled (pre-started).",
            ["state"],
            registry=self.registry,
        )
        self.sandbox_starts = Counter(
            "soulbox_worker_sandbox_starts",
            "Sandboxes handed out, by template and kind: warm (from the pool) or cold (started on demand).",
            ["template", "kind"],
            registry=self.registry,
        )
        self.sandbox_start_seconds = Histogram(
            "soulbox_worker_sandbox_start_seconds",
            "Time to start one sandbox, until its daemons are ready.",
            ["template"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )

    def watch_in_flight(self, read: Callable[[], int]) -> None:
        self.in_flight.set_function(lambda: float(read()))

    def watch_sandboxes(self, in_use: Callable[[], int], pooled: Callable[[], int]) -> None:
        self.sandboxes.labels("in_use").set_function(lambda: float(in_use()))
        self.sandboxes.labels("pooled").set_function(lambda: float(pooled()))

    def finished(self, tier: Tier, outcome: Outcome | None, duration_ms: float | None) -> None:
        self.invocations.labels(tier.value, outcome.value if outcome is not None else "unknown").inc()
        if duration_ms is not None:
            self.run_seconds.labels(tier.value).observe(duration_ms / 1000)

    def handed_out(self, template: str, kind: StartKind) -> None:
        self.sandbox_starts.labels(template, kind).inc()

    def started_box(self, template: str, seconds: float) -> None:
        self.sandbox_start_seconds.labels(template).observe(seconds)
