"""Waiting for a batch of pipelined JetStream publishes.

nats-py's ``publish_async`` futures have no deadline of their own: a publish
lost during a reconnect would leave its future pending forever. ``await_acks``
bounds the wait, retrieves every outcome (so no exception goes unobserved),
cancels what is still pending on timeout, and raises the first failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.js.api import PubAck

from soulbox.core.errors import Unavailable


async def await_acks(futures: Sequence[asyncio.Future[PubAck]], *, timeout: float) -> list[PubAck]:
    """Every ``PubAck`` in order, or raise: ``Unavailable`` on timeout, else the first error."""
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
