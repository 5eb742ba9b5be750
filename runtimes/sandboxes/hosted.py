"""One handed-out sandbox as its worker keeps it: box, record, billing period, samples; its events and metrics."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from soulbox.core.sandboxes import (
    SandboxLogLine,
    SandboxMetric,
    SandboxMetricsBatch,
    SandboxRecord,
    SandboxState,
    SandboxUsage,
)
from soulbox.core.sandboxlog import SandboxLogPublisher
from soulbox.core.schemas import LIFECYCLE_EVENT_VERSION, EventType, InvocationError, LifecycleEvent, Tier

from ..linux.box import Box
from ..linux.linelog import LogLine
from .envd import EnvdClient
from .templates import HOME

MIB = 1024 * 1024
METRICS_KEPT = 3600  # one hour of samples


@dataclass(eq=False)
class Hosted:
    box: Box
    record: SandboxRecord
    envd: EnvdClient
    deadline: asyncio.TimerHandle | None = None
    samples: deque[SandboxMetric] = field(default_factory=lambda: deque(maxlen=METRICS_KEPT))
    last_cpu: tuple[float, int] | None = None  # (monotonic time, cpu ns) of the last sample
    # The billed running period: since creation or the last resume, up to a pause or the end.
    period_started: float = field(default_factory=time.monotonic)
    period_cpu_ns: int = 0
    period_tx: int = 0  # bytes the sandbox had sent when the period started (billed as egress)
    events: int = 0  # lifecycle events made, numbering their ids
    log_out: SandboxLogPublisher | None = None  # its log on SB_LOGS, kept after it ends

    def event(self, type_: EventType, *, billed: bool = False, reason: str | None = None) -> LifecycleEvent:
        """The next lifecycle event of this sandbox (noted in its log); billed ones close the running period."""
        record = self.record
        seconds = cpu_ms = egress_bytes = None
        if billed:
            seconds = round(time.monotonic() - self.period_started, 3)
            cpu_ms = max(0, cpu_ns(self.box) - self.period_cpu_ns) / 1e6
            if self.box.net is not None:
                egress_bytes = max(0, self.box.net_counters()[1] - self.period_tx)
        event = LifecycleEvent(
            v=LIFECYCLE_EVENT_VERSION,
            id=f"{record.sandbox_id}.{type_.value.removeprefix('sandbox.')}.{self.events}",
            type=type_,
            tenant=record.tenant,
            function=record.template,
            tier=Tier.LINUX,
            sandbox_id=record.sandbox_id,
            memory_limit_mb=record.memory_mb,
            seconds=seconds,
            cpu_ms=cpu_ms,
            egress_bytes=egress_bytes,
            error=InvocationError(kind="ended", message=reason) if reason and reason != "killed" else None,
        )
        self.events += 1
        self.box.log.note(f"{type_.value}" + (f" ({reason})" if reason else ""))
        return event

    def start_period(self) -> None:
        """A running period starts now (created, or resumed)."""
        self.period_started, self.period_cpu_ns = time.monotonic(), cpu_ns(self.box)
        self.period_tx = self.box.net_counters()[1]

    def publish_log(self, out: SandboxLogPublisher) -> None:
        """From now on the box's log goes to ``out`` too, starting with what it printed in the pool."""

        def publish(line: LogLine) -> None:
            out.write(SandboxLogLine(at=line.at, level=line.level, message=line.text))

        for line in self.box.log.lines():
            publish(line)
        self.box.log.sink = publish
        self.log_out = out

    async def close_log(self) -> None:
        if self.log_out is not None:
            self.box.log.sink = None
            await self.log_out.close()

    def sample(self) -> SandboxMetric:
        """A usage sample now: CPU since the last one, memory, disk, network and block I/O counters."""
        usage = self.box.usage()
        now = time.monotonic()
        pct = 0.0
        if usage.cpu_ns is not None:
            if self.last_cpu is not None and now > self.last_cpu[0]:
                used_s = (usage.cpu_ns - self.last_cpu[1]) / 1e9
                pct = max(0.0, 100.0 * used_s / (now - self.last_cpu[0]) / self.record.cpu_count)
            self.last_cpu = (now, usage.cpu_ns)
        rx, tx = self.box.net_counters()
        return SandboxMetric(
            cpu_count=self.record.cpu_count,
            cpu_used_pct=round(pct, 2),
            mem_used=usage.memory_bytes,
            mem_total=self.record.memory_mb * MIB,
            disk_used=self.box.disk_used(HOME),
            disk_total=self.record.disk_mb * MIB,
            net_rx_bytes=rx,
            net_tx_bytes=tx,
            disk_read_bytes=usage.io_read_bytes or 0,
            disk_write_bytes=usage.io_write_bytes or 0,
        )


def usage_batch(worker_id: str, hosted: list[Hosted]) -> SandboxMetricsBatch:
    """A sample of every running sandbox (each also kept for the metrics API), as one batch to publish."""
    batch = []
    for one in hosted:
        if one.record.state == SandboxState.RUNNING and one.box.alive:
            try:
                sample = one.sample()
            except OSError:  # ended meanwhile
                continue
            one.samples.append(sample)
            record = one.record
            batch.append(
                SandboxUsage(
                    sandbox_id=record.sandbox_id, tenant=record.tenant, template=record.template, metric=sample
                )
            )
    return SandboxMetricsBatch(worker_id=worker_id, sandboxes=batch)


def cpu_ns(box: Box) -> int:
    try:
        return box.usage().cpu_ns or 0
    except OSError:  # the cgroup is gone with the box
        return 0
