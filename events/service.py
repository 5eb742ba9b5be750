"""The events process: one consumer kind (billing, audit or metrics) per process.

``main(kind)`` builds the settings once, connects, declares the topology and
runs the matching recorder through the consumer loop until SIGTERM/SIGINT;
then it settles the batch in hand, drains the connection and returns 0.
The metrics kind also serves ``/metrics`` and polls the scheduler backlog.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Literal, TypeGuard, get_args

from nats.js import JetStreamContext

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.errors import SoulboxError
from soulbox.core.logging import configure_logging, get_logger
from soulbox.core.settings import Settings

from .audit import AuditRecorder
from .billing import BillingRecorder
from .consumer import EventConsumer, Recorder
from .metrics import MetricsRecorder
from .metrics_server import MetricsServer

Kind = Literal["billing", "audit", "metrics"]
KINDS: tuple[Kind, ...] = get_args(Kind)

log = get_logger(__name__)


def is_kind(value: str) -> TypeGuard[Kind]:
    return value in KINDS


def build_recorder(kind: Kind, settings: Settings, js: JetStreamContext) -> Recorder:
    """The recorder for ``kind``; its durable consumer has the same name."""
    if kind == "billing":
        return BillingRecorder(js, default_memory_mb=settings.functions.memory_mb)
    if kind == "audit":
        return AuditRecorder(js)
    return MetricsRecorder()


async def run(kind: Kind, settings: Settings, stop: asyncio.Event) -> None:
    """Consume the ``kind`` durable until ``stop`` is set, then drain the connection."""
    nc = await connect(settings, name=f"soulbox-events-{kind}")
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        recorder = build_recorder(kind, settings, js)
        consumer = EventConsumer(js, recorder, durable=kind, batch=settings.events.batch)
        if isinstance(recorder, MetricsRecorder):
            server = MetricsServer(
                recorder.registry, host=settings.events.metrics_host, port=settings.events.metrics_port
            )
            async with server, asyncio.TaskGroup() as tasks:
                tasks.create_task(consumer.run(stop))
                tasks.create_task(recorder.watch_queue_depth(js, stop))
        else:
            await consumer.run(stop)
    finally:
        await nc.drain()  # flushes the last acks and publishes, then closes


async def _run_until_signalled(kind: Kind, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run(kind, settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(kind: str) -> int:
    """Run one events consumer process; the exit status (0 after a clean stop)."""
    if not is_kind(kind):
        print(f"usage: python -m soulbox.events {{{'|'.join(KINDS)}}}", file=sys.stderr)
        return 2
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, component=f"events.{kind}")
    try:
        asyncio.run(_run_until_signalled(kind, settings))
    except SoulboxError as exc:
        log.error("events.failed", error=exc.message, code=exc.code)
        return 1
    log.info("events.exited")
    return 0
