"""Per-sandbox gauges from the workers' one-second samples (core NATS ``sb.metrics.sandboxes.<worker>``).

    soulbox_sandbox_cpu_used_ratio{sandbox_id,tenant,template}     CPU used over the last second / cores
    soulbox_sandbox_memory_used_bytes{sandbox_id,tenant,template}  memory charged to its cgroup
    soulbox_sandbox_disk_used_bytes{sandbox_id,tenant,template}    bytes in its home tmpfs
    soulbox_sandbox_network_{received,sent}_bytes{...}            on its veth since it started (egress only)
    soulbox_sandbox_disk_{read,written}_bytes{...}                block I/O of its processes since it started
    soulbox_sandboxes_running{worker}                              running sandboxes per worker

Each batch is a worker's whole set of running sandboxes, so a sandbox that
is no longer in its worker's batch (killed, paused) loses its series, and a
worker silent for ``stale_after`` seconds loses all of its.
"""

from __future__ import annotations

import contextlib
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry, Gauge

from soulbox.core import names
from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError
from soulbox.core.sandboxes import SandboxMetricsBatch

LABELS = ("sandbox_id", "tenant", "template")


class SandboxGauges:
    def __init__(self, registry: CollectorRegistry, *, stale_after: float = 10.0) -> None:
        self.cpu = Gauge(
            "soulbox_sandbox_cpu_used_ratio", "CPU used by a sandbox over the last second, per core.", LABELS,
            registry=registry,
        )  # fmt: skip
        self.memory = Gauge(
            "soulbox_sandbox_memory_used_bytes", "Memory charged to a sandbox's cgroup.", LABELS, registry=registry
        )
        self.disk = Gauge("soulbox_sandbox_disk_used_bytes", "Bytes in a sandbox's home.", LABELS, registry=registry)
        # Cumulative, but set from the samples (a sandbox's series ends with it): gauges, not counters.
        self.counters = {
            name: Gauge(f"soulbox_sandbox_{name}_bytes", help_, LABELS, registry=registry)
            for name, help_ in (
                ("network_received", "Bytes a sandbox received on its veth since it started."),
                ("network_sent", "Bytes a sandbox sent on its veth since it started."),
                ("disk_read", "Block device bytes a sandbox's processes read since it started."),
                ("disk_written", "Block device bytes a sandbox's processes wrote since it started."),
            )
        }
        self.running = Gauge(
            "soulbox_sandboxes_running", "Running sandboxes, by worker.", ["worker"], registry=registry
        )
        self._stale_after = stale_after
        self._by_worker: dict[str, tuple[float, set[tuple[str, str, str]]]] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: NATS) -> None:
        self._sub = await nc.subscribe(names.SANDBOX_METRICS_SUBJECTS, cb=self._on_batch)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_batch(self, msg: Msg) -> None:
        try:
            self.apply(decode(SandboxMetricsBatch, msg.data))
        except SchemaError:
            return

    def apply(self, batch: SandboxMetricsBatch, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        current = set()
        for usage in batch.sandboxes:
            labels = (usage.sandbox_id, usage.tenant, usage.template)
            current.add(labels)
            self.cpu.labels(*labels).set(usage.metric.cpu_used_pct / 100)
            self.memory.labels(*labels).set(usage.metric.mem_used)
            self.disk.labels(*labels).set(usage.metric.disk_used)
            m = usage.metric
            for name, bytes_ in (
                ("network_received", m.net_rx_bytes), ("network_sent", m.net_tx_bytes),
                ("disk_read", m.disk_read_bytes), ("disk_written", m.disk_write_bytes),
            ):  # fmt: skip
                self.counters[name].labels(*labels).set(bytes_)
        _, before = self._by_worker.get(batch.worker_id, (now, set()))
        self._drop(before - current)
        self._by_worker[batch.worker_id] = (now, current)
        self.running.labels(batch.worker_id).set(len(current))
        for worker, (seen, series) in list(self._by_worker.items()):
            if now - seen > self._stale_after:  # the worker is gone: so are its sandboxes
                self._drop(series)
                del self._by_worker[worker]
                with contextlib.suppress(KeyError):
                    self.running.remove(worker)

    def _drop(self, series: set[tuple[str, str, str]]) -> None:
        for labels in series:
            for gauge in (self.cpu, self.memory, self.disk, *self.counters.values()):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
