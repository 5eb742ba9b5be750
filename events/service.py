"""The events process: one consumer kind (billing, audit or metrics) per process.

``run(kind)`` connects, declares the topology and runs the matching recorder
through the consumer loop until ``stop`` is set; then it settles the batch in
hand and drains the connection. Besides consuming:

- billing exports usage reports to S3 every ``billing.export_interval_s``;
- audit also chains the API-call intake, exports sealed segments and applies
  retention every ``audit.export_interval_s``;
- metrics serves ``/metrics`` and polls the scheduler backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal, TypeGuard, get_args

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets, connect, ensure_topology
from soulbox.core.errors import SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.metrics_server import MetricsServer
from soulbox.core.schemas import AuditRecord
from soulbox.core.settings import Settings

from .audit import AuditRecorder, IntakeRecorder
from .auditexport import apply_retention, export_segment
from .auditlog import AuditLog
from .billing import BILLED_TYPES, BillingRecorder
from .consumer import EventConsumer
from .metrics import MetricsRecorder
from .s3 import ExportStore
from .sandbox_metrics import SandboxGauges
from .tenantkeys import TenantKeys
from .usage import Granularity
from .usageexport import export_recent

Kind = Literal["billing", "audit", "metrics"]
KINDS: tuple[Kind, ...] = get_args(Kind)

log = get_logger(__name__)


def is_kind(value: str) -> TypeGuard[Kind]:
    return value in KINDS


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


async def _billing(settings: Settings, nc: NATS, js: JetStreamContext, buckets: Buckets, stop: asyncio.Event) -> None:
    recorder = BillingRecorder(js, default_memory_mb=settings.functions.memory_mb)
    consumer = EventConsumer(
        nc,
        recorder,
        durable="billing",
        batch=settings.events.batch,
        linger=settings.events.linger_s,
        types=BILLED_TYPES,
    )
    interval = settings.billing.export_interval_s
    if interval <= 0 or not settings.s3.bucket:
        await consumer.run(stop)
        return
    store = ExportStore(settings.s3)
    granularity: Granularity = "day" if settings.billing.export_granularity == "day" else "hour"

    async def export() -> None:
        await export_recent(buckets.billing, store, prices=settings.billing.prices, granularity=granularity)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(consumer.run(stop))
        tasks.create_task(every(interval, stop, export, name="billing.export"))


async def _audit(settings: Settings, nc: NATS, js: JetStreamContext, buckets: Buckets, stop: asyncio.Event) -> None:
    audit_log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), export_state=buckets.audit_state)
    await audit_log.load()
    batch = settings.events.batch
    linger = settings.events.linger_s
    events = EventConsumer(nc, AuditRecorder(audit_log), durable=names.AUDIT_CONSUMER, batch=batch, linger=linger)
    intake = EventConsumer(
        nc,
        IntakeRecorder(audit_log),
        durable=names.AUDIT_CONSUMER,
        batch=batch,
        model=AuditRecord,
        stream=names.AUDIT_INTAKE_STREAM,
        linger=linger,
    )
    a = settings.audit
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(events.run(stop))
            tasks.create_task(intake.run(stop))
            if a.export_interval_s > 0 and settings.s3.bucket:
                store = ExportStore(settings.s3)

                async def export() -> None:
                    while await export_segment(
                        js, buckets.audit_state, store, max_records=a.segment_records, max_age_s=a.segment_seconds
                    ):
                        pass
                    if a.max_age_s > 0:
                        await apply_retention(js, buckets.audit_state, max_age_s=a.max_age_s)

                tasks.create_task(every(a.export_interval_s, stop, export, name="audit.export"))
    finally:
        await audit_log.close()


async def _metrics(settings: Settings, nc: NATS, js: JetStreamContext, stop: asyncio.Event) -> None:
    recorder = MetricsRecorder()
    consumer = EventConsumer(
        nc, recorder, durable="metrics", batch=settings.events.batch, linger=settings.events.linger_s
    )
    server = MetricsServer(recorder.registry, host=settings.events.metrics_host, port=settings.events.metrics_port)
    sandboxes = SandboxGauges(recorder.registry)
    await sandboxes.start(nc)
    try:
        async with server, asyncio.TaskGroup() as tasks:
            tasks.create_task(consumer.run(stop))
            tasks.create_task(recorder.watch_queue_depth(js, stop))
    finally:
        await sandboxes.stop()


async def run(kind: Kind, settings: Settings, stop: asyncio.Event) -> None:
    """Consume the ``kind`` durable until ``stop`` is set, then drain the connection."""
    nc = await connect(settings, name=f"soulbox-events-{kind}")
    try:
        js = nc.jetstream()
        buckets = await ensure_topology(js, settings)
        if kind == "billing":
            await _billing(settings, nc, js, buckets, stop)
        elif kind == "audit":
            await _audit(settings, nc, js, buckets, stop)
        else:
            await _metrics(settings, nc, js, stop)
    finally:
        await nc.drain()  # flushes the last acks and publishes, then closes
