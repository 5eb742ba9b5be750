"""``python -m soulbox.scheduler``: run one scheduler process."""

from __future__ import annotations

import asyncio
import signal

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.inbox import Inbox
from soulbox.core.metrics_server import MetricsServer
from soulbox.core.process import run_service
from soulbox.core.settings import Settings

from .directory import WorkerDirectory
from .sandboxes import SandboxPlacer
from .service import Scheduler


async def run(settings: Settings) -> None:
    nc = await connect(settings, name="soulbox-scheduler")
    buckets = await ensure_topology(nc.jetstream(), settings)
    directory = WorkerDirectory(nc, buckets.workers, ttl=settings.worker.heartbeat_ttl_s)
    await directory.start()
    inbox = Inbox(nc)
    await inbox.start()
    scheduler = Scheduler(settings, nc, buckets, directory, inbox)
    placer = SandboxPlacer(settings, nc, directory)
    await placer.start()
    metrics: MetricsServer | None = None
    if settings.scheduler.metrics_port:
        metrics = MetricsServer(
            scheduler.instruments.registry, host=settings.scheduler.metrics_host, port=settings.scheduler.metrics_port
        )
        await metrics.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, scheduler.stop)
    try:
        await scheduler.serve()
    finally:
        if metrics is not None:
            await metrics.close()
        await placer.stop()
        await inbox.stop()
        await directory.stop()
        await nc.drain()


def main() -> None:
    run_service("scheduler", run)


if __name__ == "__main__":
    main()
