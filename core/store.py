"""Small JetStream KV helpers used on hot paths.

``KeyValue.put`` in nats-py awaits the server's ack; on hot paths we pipeline
puts with ``publish_async`` instead and await the returned futures in a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from . import tracing
from .codec import M, decode, encode
from .errors import Unavailable
from .names import event_subject
from .schemas import LifecycleEvent


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


async def put_nowait(js: JetStreamContext, bucket: str, key: str, message: M) -> asyncio.Future[PubAck]:
    """Put ``message`` under ``key`` without waiting for the ack; await the future to be sure."""
    return await js.publish_async(kv_subject(bucket, key), encode(message))


async def publish_event(js: JetStreamContext, event: LifecycleEvent) -> asyncio.Future[PubAck]:
    """Publish a lifecycle event (de-duplicated by its id); await the future to be sure."""
    with tracing.span(f"publish {event.type.value}", kind=tracing.SpanKind.PRODUCER) as span:
        if span.is_recording():
            span.set_attributes({"messaging.system": "nats", "soulbox.event_id": event.id})
        headers = tracing.inject({"Nats-Msg-Id": event.id})
        return await js.publish_async(event_subject(event.type.value), encode(event), headers=headers)


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
        await watcher.stop()  # type: ignore[no-untyped-call]


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
