"""Small JetStream KV helpers used on hot paths.

``KeyValue.put`` in nats-py awaits the server's ack; on hot paths we pipeline
puts with ``publish_async`` instead and await the returned futures in a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from .codec import M, decode, encode
from .errors import Unavailable


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


async def put_nowait(js: JetStreamContext, bucket: str, key: str, message: M) -> asyncio.Future[PubAck]:
    """Put ``message`` under ``key`` without waiting for the ack; await the future to be sure."""
    return await js.publish_async(kv_subject(bucket, key), encode(message))


async def get_model(kv: KeyValue, key: str, model: type[M]) -> M | None:
    """The current value of ``key`` decoded as ``model``, or None if absent/deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return decode(model, entry.value)


async def scan(kv: KeyValue, key_filter: str, model: type[M]) -> AsyncIterator[tuple[str, M]]:
    """Every live key matching ``key_filter`` with its value, streamed by one ordered consumer."""
    watcher = await kv.watch(key_filter, ignore_deletes=True, meta_only=False)
    try:
        async for entry in watcher:
            if entry is None:  # caught up with the stored values
                break
            if entry.value:
                yield entry.key, decode(model, entry.value)
    finally:
        await watcher.stop()


async def settle(acks: list[asyncio.Future[PubAck]], timeout: float = 10.0) -> list[PubAck]:
    """Await pipelined publishes.

    nats-py leaves a ``publish_async`` future pending forever when the server
    answers with an error (its reply handler raises instead of failing the
    future), so every batch is awaited with a deadline.
    """
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*acks))
    except TimeoutError:
        for ack in acks:
            ack.cancel()
        raise Unavailable(f"JetStream did not acknowledge {len(acks)} publishes within {timeout}s") from None
