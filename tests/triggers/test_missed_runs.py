"""The missed-runs policy of cron triggers after downtime, against a real NATS (no scheduler needed)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from nats.aio.client import Client as NATS

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.inbox import Inbox
from soulbox.core.schemas import FunctionSpec, utcnow
from soulbox.core.settings import Settings
from soulbox.core.triggerspecs import CronConfig, CronState, MissedRuns, TriggerKind, TriggerSpec
from soulbox.triggers.catalog import TriggerCatalog
from soulbox.triggers.service import TriggerService
from soulbox.triggers.submit import Submitter
from tests.triggers.helpers import Published


@pytest.mark.parametrize("missed", [MissedRuns.RUN_ONCE, MissedRuns.SKIP])
async def test_after_downtime(nc: NATS, buckets: Buckets, settings: Settings, missed: MissedRuns) -> None:
    if utcnow().second >= 57:  # keep the run clear of a minute boundary (its tick would fire too)
        await asyncio.sleep(61 - utcnow().second)
    fn = FunctionSpec(tenant="default", name="echo", artifact="0" * 64, artifact_size=1)
    await buckets.functions.put(names.function_key("default", "echo"), encode(fn))
    now = utcnow()
    # Every minute at second 0; the service was down for the last ten minutes.
    trigger = TriggerSpec(
        tenant="default",
        id="minutely",
        function="echo",
        kind=TriggerKind.CRON,
        cron=CronConfig(expression="* * * * *", missed=missed),
        created_at=now - timedelta(hours=1),
    )
    key = names.trigger_key("default", "minutely")
    await buckets.triggers.put(key, encode(trigger))
    await buckets.cron.put(key, encode(CronState(tick=now - timedelta(minutes=10))))
    published = await Published().start(nc)
    catalog = TriggerCatalog(buckets.triggers)
    await catalog.start()
    inbox = Inbox(nc)
    await inbox.start()
    service = TriggerService(settings, nc, buckets.cron, catalog, Submitter(nc.jetstream(), buckets, inbox))
    serving = asyncio.create_task(service.serve())
    await asyncio.sleep(1.0)
    service.stop()
    await serving
    await inbox.stop()
    await catalog.stop()
    await published.stop()
    fired = published.of("minutely")
    if missed is MissedRuns.SKIP:
        assert fired == []
    else:
        assert len(fired) == 1  # one run for all the missed ticks: the latest
        tick = json.loads(fired[0].input)["tick"]
        latest = now.replace(second=0, microsecond=0)
        assert tick == latest.isoformat()
