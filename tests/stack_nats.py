"""Synchronous peeks into a stack's NATS, for test set-up and assertions."""

from __future__ import annotations

import asyncio

import nats

from soulbox.core import names
from soulbox.core.codec import decode
from soulbox.core.schemas import WorkerHeartbeat


def heartbeats(url: str) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(names.WORKERS_BUCKET)
            try:
                keys = await kv.keys()
            except Exception:  # no keys yet
                return []
            beats = []
            for key in keys:
                entry = await kv.get(key)
                if entry.value:
                    beats.append(decode(WorkerHeartbeat, entry.value).model_dump())
            return beats
        finally:
            await nc.close()

    try:
        return asyncio.run(read())
    except Exception:
        return []
