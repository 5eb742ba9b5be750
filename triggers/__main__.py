"""``python -m soulbox.triggers``: run one trigger service (NATS subjects and cron schedules)."""

from __future__ import annotations

import asyncio
import signal

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.inbox import Inbox
from soulbox.core.process import run_service
from soulbox.core.settings import Settings

from .callbacks import CallbackDeliverer
from .catalog import TriggerCatalog
from .service import TriggerService
from .submit import Submitter


async def run(settings: Settings) -> None:
    nc = await connect(settings, name="soulbox-triggers")
    js = nc.jetstream()
    buckets = await ensure_topology(js, settings)
    catalog = TriggerCatalog(buckets.triggers)
    await catalog.start()
    inbox = Inbox(nc)
    await inbox.start()
    service = TriggerService(settings, nc, buckets.cron, catalog, Submitter(js, buckets, inbox))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.serve(callbacks=CallbackDeliverer(js, buckets.invocations, settings.triggers))
    finally:
        await inbox.stop()
        await catalog.stop()
        await nc.drain()


def main() -> None:
    run_service("triggers", run)


if __name__ == "__main__":
    main()
