"""Waiting for invocation records: the gateway's side of synchronous invokes.

Each gateway process has one inbox subscription; workers publish a finished
record to ``<inbox>.<invocation id>`` and the matching waiter wakes up. An
invocation this process did not submit (a repeated id) is awaited by a
watch on its key in the invocations bucket instead.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import InvocationRecord

log = get_logger(__name__)


class ResultWaiter:
    def __init__(self, nc: NATS, invocations: KeyValue) -> None:
        self._nc = nc
        self._kv = invocations
        self._prefix = nc.new_inbox()
        self._waiters: dict[str, asyncio.Future[InvocationRecord]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_result)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for future in self._waiters.values():
            future.cancel()

    def reply_subject(self, invocation_id: str) -> str:
        return f"{self._prefix}.{invocation_id}"

    def expect(self, invocation_id: str) -> asyncio.Future[InvocationRecord]:
        """Register interest before submitting, so a fast result is not missed."""
        future: asyncio.Future[InvocationRecord] = asyncio.get_running_loop().create_future()
        self._waiters[invocation_id] = future
        return future

    def discard(self, invocation_id: str) -> None:
        future = self._waiters.pop(invocation_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def _on_result(self, msg: Msg) -> None:
        invocation_id = msg.subject.rsplit(".", 1)[-1]
        future = self._waiters.pop(invocation_id, None)
        if future is None or future.done():
            return
        try:
            future.set_result(decode(InvocationRecord, msg.data))
        except SchemaError as exc:
            log.error("gateway.bad_result", invocation_id=invocation_id, error=exc.message)

    async def watch_until_finished(self, invocation_id: str, timeout: float) -> InvocationRecord | None:
        """The record once terminal, read from the bucket; None on timeout."""
        watcher = await self._kv.watch(invocation_id)
        try:
            async with asyncio.timeout(timeout):
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue
                    record = decode(InvocationRecord, entry.value)
                    if record.status.terminal:
                        return record
        except TimeoutError:
            return None
        finally:
            await watcher.stop()
        return None
