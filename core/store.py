"""Small JetStream KV helpers used on hot paths.

``KeyValue.put`` in nats-py awaits the server's ack; on hot paths we pipeline
puts with ``publish_async`` instead and await the returned futures in a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from . import eventbatch
from .codec import M, decode, encode
from .errors import Unavailable
from .schemas import LifecycleEvent

SCAN_BATCH = 256
SCAN_FETCH_S = 5.0
SCAN_IDLE_S = 30.0


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def kv_value(msg: Msg) -> bytes | None:
    """A KV stream message's value; None for a delete or purge marker (or an empty value)."""
    operation = msg.headers.get("KV-Operation") if msg.headers else None
    if operation in ("DEL", "PURGE") or not msg.data:
        return None
    return msg.data


async def put_nowait(js: JetStreamContext, bucket: str, key: str, message: M) -> asyncio.Future[PubAck]:
    """Put ``message`` under ``key`` without waiting for the ack; await the future to be sure."""
    return await js.publish_async(kv_subject(bucket, key), encode(message))


async def publish_event(js: JetStreamContext, event: LifecycleEvent) -> asyncio.Future[PubAck]:
    """Publish a lifecycle event, batched with the process's other events (see :mod:`.eventbatch`);
    await the future to be sure it is stored."""
    return await eventbatch.batcher(js).publish(event)


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
    """Every live key matching ``key_filter`` with its value decoded as ``model`` (see :func:`scan_raw`)."""
    async for key, value in scan_raw(kv, key_filter):
        yield key, decode(model, value)


async def scan_raw(kv: KeyValue, key_filter: str) -> AsyncIterator[tuple[str, bytes]]:
    """Every live key matching ``key_filter`` with its value, read through one ephemeral pull consumer.

    Not ``KeyValue.watch``: nats-py ends its initial values early when the
    server has pushed them all before the consumer's info comes back (its
    marker then says "no values"), which under load made whole listings
    empty. A pull consumer is given nothing before it asks, so the count in
    its info is exactly what there is to read.
    """
    js: JetStreamContext = kv._js  # the bucket's own context and names (nats-py keeps them private)
    prefix = f"$KV.{kv._name}."
    stream: str = kv._stream
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=SCAN_IDLE_S,  # the server drops it if we die mid-scan
        mem_storage=True,
    )
    sub = await js.pull_subscribe(prefix + key_filter, stream=stream, config=config)
    name: str | None = None
    try:
        info = await sub.consumer_info()
        name, remaining = info.name, info.num_pending or 0
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(remaining, SCAN_BATCH), timeout=SCAN_FETCH_S)
            except (NatsTimeoutError, TimeoutError):
                return  # keys purged since the count: nothing more will come
            for msg in msgs:
                remaining -= 1
                value = kv_value(msg)
                if value is not None:
                    yield msg.subject[len(prefix) :], value
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if name is not None:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, name)


async def settle(futures: Sequence[asyncio.Future[PubAck]], *, timeout: float = 10.0) -> list[PubAck]:
    """Every ``PubAck`` of a batch of pipelined publishes, in order, or raise.

    nats-py's ``publish_async`` futures have no deadline of their own (and
    one whose ack is lost in a reconnect, or whose server reply is an error,
    stays pending forever), so the wait is bounded: ``Unavailable`` on
    timeout, else the first failure. Every outcome is retrieved, so no
    exception goes unobserved.
    """
    if not futures:
        return []
    done, pending = await asyncio.wait(futures, timeout=timeout)
    for future in pending:
        future.cancel()
    errors: list[BaseException] = []
    for future in done:
        if future.cancelled():
            errors.append(Unavailable("a publish was cancelled before its ack"))
        elif (exc := future.exception()) is not None:
            errors.append(exc)
    if pending:
        raise Unavailable(f"{len(pending)} of {len(futures)} publishes not acknowledged within {timeout}s")
    if errors:
        raise errors[0]
    return [future.result() for future in futures]
