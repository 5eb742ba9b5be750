"""Health probes shared by ``up`` (readiness) and ``status``.

The stack is ready when the gateway answers ``GET /readyz`` with 200 and a
worker has put a fresh :class:`WorkerHeartbeat` in the workers bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import datetime, timedelta

import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from soulbox.core import names
from soulbox.core.bus import connect
from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError, Unavailable
from soulbox.core.schemas import WorkerHeartbeat, utcnow
from soulbox.core.settings import Settings
from soulbox.core.store import scan_raw


async def connect_within(settings: Settings, *, name: str, timeout: float) -> NATS:
    """``bus.connect``, which retries forever on its own, bounded by ``timeout`` s."""
    try:
        return await asyncio.wait_for(connect(settings, name=name), timeout)
    except TimeoutError as exc:
        urls = ", ".join(settings.nats.urls)
        raise Unavailable(f"cannot connect to NATS at {urls} within {timeout:g}s") from exc


async def gateway_ready(client: httpx.AsyncClient, base_url: str) -> bool:
    try:
        response = await client.get(f"{base_url}/readyz")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def heartbeats(js: JetStreamContext) -> list[WorkerHeartbeat]:
    """Every decodable heartbeat in the workers bucket, fresh or stale."""
    try:
        kv = await js.key_value(names.WORKERS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return []
    found: list[WorkerHeartbeat] = []
    async for _, value in scan_raw(kv, ">"):
        try:
            found.append(decode(WorkerHeartbeat, value))
        except SchemaError:  # a newer worker's heartbeat: not ours to judge
            continue
    return found


def heartbeat_age(heartbeat: WorkerHeartbeat, now: datetime | None = None) -> float:
    age: timedelta = (now or utcnow()) - heartbeat.at
    return age.total_seconds()


def live_workers(
    beats: list[WorkerHeartbeat], *, ttl_s: float, among: Collection[str] | None = None
) -> list[WorkerHeartbeat]:
    """Heartbeats younger than ``ttl_s``, optionally only of the workers ``among``."""
    now = utcnow()
    return [beat for beat in beats if heartbeat_age(beat, now) <= ttl_s and (among is None or beat.worker_id in among)]


async def wait_ready(
    js: JetStreamContext,
    *,
    gateway: str,
    worker_ids: Collection[str],
    ttl_s: float,
    interval: float = 0.25,
) -> list[WorkerHeartbeat]:
    """Poll until the gateway is ready and one of ``worker_ids`` is live; those workers."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if await gateway_ready(client, gateway):
                live = live_workers(await heartbeats(js), ttl_s=ttl_s, among=worker_ids)
                if live:
                    return live
            await asyncio.sleep(interval)


async def readiness_report(js: JetStreamContext, *, gateway: str, worker_ids: Collection[str], ttl_s: float) -> str:
    """What is still missing, in words, for a 'still waiting' message."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        missing = [] if await gateway_ready(client, gateway) else [f"gateway {gateway}/readyz is not 200"]
    if not live_workers(await heartbeats(js), ttl_s=ttl_s, among=worker_ids):
        missing.append("no worker heartbeat yet")
    return "; ".join(missing) or "ready"
