"""The events process: billing, audit and metrics over one read of every lifecycle event.

``run`` connects, declares the topology (and the events durable, see
:mod:`.topology`) and runs the three recorders behind one consumer loop
(:mod:`.fanout`) until ``stop`` is set; then it settles the batch in hand,
gives up the durable's pin and drains the connection. Besides consuming:

- billing exports usage reports to S3 every ``billing.export_interval_s``;
- audit also chains the API-call intake, exports sealed segments and applies
  retention every ``audit.export_interval_s``;
- metrics serves ``/metrics`` and polls the scheduler backlog.

Any number of these processes may run (on any nodes): one is served the
lifecycle events at a time (the durable's pinned client), the others stand by;
all of them chain the intake, which the audit log makes safe for several writers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets, connect, ensure_topology
from soulbox.core.errors import SoulboxError
from soulbox.core.ledger import AuditRecord
from soulbox.core.logging import get_logger
from soulbox.core.metrics_server import MetricsServer
from soulbox.core.settings import Settings

from .audit import AuditRecorder, IntakeRecorder
from .auditexport import apply_retention, export_segment
from .auditlog import AuditLog
from .billing import BillingRecorder
from .consumer import EventConsumer
from .fanout import Fanout
from .metrics import MetricsRecorder
from .s3 import ExportStore
from .sandbox_metrics import SandboxGauges
from .tenantkeys import TenantKeys
from .topology import ensure_events_consumer
from .usage import Granularity
from .usageexport import export_recent

log = get_logger(__name__)


async def every(interval: float, stop: asyncio.Event, job: Callable[[], Awaitable[object]], *, name: str) -> None:
    """Run ``job`` every ``interval`` seconds until ``stop``; a failed run is logged and retried next time."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            await job()
        except (SoulboxError, NatsError, OSError) as exc:
            log.warning(f"{name}.failed", error=repr(exc))


Job = tuple[float, Callable[[], Awaitable[object]], str]


def _exports(settings: Settings, js: JetStreamContext, buckets: Buckets) -> list[Job]:
    """The periodic jobs: (interval, job, name) of usage and audit exports (none without an S3 bucket)."""
    if not settings.s3.bucket:
        return []
    store = ExportStore(settings.s3)
    jobs: list[Job] = []
    granularity: Granularity = "day" if settings.billing.export_granularity == "day" else "hour"

    async def export_usage() -> None:
        await export_recent(buckets.billing, store, prices=settings.billing.prices, granularity=granularity)

    a = settings.audit

    async def export_audit() -> None:
        while await export_segment(
            js, buckets.audit_state, store, max_records=a.segment_records, max_age_s=a.segment_seconds
        ):
            pass
        if a.max_age_s > 0:
            await apply_retention(js, buckets.audit_state, max_age_s=a.max_age_s)

    if settings.billing.export_interval_s > 0:
        jobs.append((settings.billing.export_interval_s, export_usage, "billing.export"))
    if a.export_interval_s > 0:
        jobs.append((a.export_interval_s, export_audit, "audit.export"))
    return jobs


async def _consume(settings: Settings, nc: NATS, js: JetStreamContext, buckets: Buckets, stop: asyncio.Event) -> None:
    await ensure_events_consumer(nc, js, settings.events)
    audit_log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), export_state=buckets.audit_state)
    await audit_log.load()
    metrics = MetricsRecorder()
    billing = BillingRecorder(nc, default_memory_mb=settings.functions.memory_mb)
    recorder = Fanout([billing, AuditRecorder(audit_log)], [metrics])
    e = settings.events
    events = EventConsumer(
        nc,
        recorder,
        durable=names.EVENTS_CONSUMER,
        batch=e.batch,
        linger=e.linger_s,
        group=names.EVENTS_CONSUMER,
        ack_all=True,
    )
    intake = EventConsumer(
        nc,
        IntakeRecorder(audit_log),
        durable=names.AUDIT_CONSUMER,
        batch=e.batch,
        model=AuditRecord,
        stream=names.AUDIT_INTAKE_STREAM,
        linger=e.linger_s,
    )
    server = MetricsServer(metrics.registry, host=e.metrics_host, port=e.metrics_port)
    sandboxes = SandboxGauges(metrics.registry)
    await sandboxes.start(nc)
    try:
        async with server, asyncio.TaskGroup() as tasks:
            tasks.create_task(events.run(stop))
            tasks.create_task(intake.run(stop))
            tasks.create_task(metrics.watch_queue_depth(js, stop))
            for interval, job, name in _exports(settings, js, buckets):
                tasks.create_task(every(interval, stop, job, name=name))
    finally:
        await sandboxes.stop()
        await audit_log.close()
        await billing.close()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Consume lifecycle events (and the audit intake) until ``stop`` is set, then drain the connection."""
    nc = await connect(settings, name="soulbox-events")
    try:
        js = nc.jetstream()
        buckets = await ensure_topology(js, settings)
        await _consume(settings, nc, js, buckets, stop)
    finally:
        await nc.drain()  # flushes the last acks and publishes, then closes
