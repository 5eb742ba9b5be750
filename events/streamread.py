"""Reading a stretch of a stream with a throwaway consumer (no acks, in memory)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api

from soulbox.core.logging import get_logger

log = get_logger(__name__)


async def read_stream(
    js: JetStreamContext,
    stream: str,
    *,
    start_seq: int = 1,
    subject: str | None = None,
    limit: int | None = None,
    batch: int = 1000,
    timeout: float = 5.0,
) -> AsyncIterator[Msg]:
    """The messages from ``start_seq`` on (optionally one subject filter), in order.

    Stops at the messages that were pending when reading began (or after
    ``limit``), so it returns promptly on a stream that keeps growing.
    """
    name = f"read-{uuid.uuid4().hex}"
    info = await js.add_consumer(
        stream,
        api.ConsumerConfig(
            name=name,
            filter_subject=subject,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    try:
        remaining = info.num_pending or 0
        if limit is not None:
            remaining = min(remaining, limit)
        if remaining == 0:
            return
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
        try:
            while remaining > 0:
                msgs = await sub.fetch(min(batch, remaining), timeout=timeout)
                for msg in msgs:
                    remaining -= 1
                    yield msg
        finally:
            await sub.unsubscribe()
    finally:
        try:
            await js.delete_consumer(stream, name)
        except NatsError as exc:  # it also expires on its own
            log.debug("read.cleanup_failed", consumer=name, error=repr(exc))
