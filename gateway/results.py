"""Waiting for invocation records: the gateway's side of synchronous invokes.

Each gateway process has one inbox subscription; workers publish a finished
record to ``<inbox>.<invocation id>`` and the matching waiter wakes up. An
invocation this process did not submit (a repeated id) is awaited by a
watch on its key in the invocations bucket instead.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from soulbox.core.codec import decode
from soulbox.core.inbox import Inbox
from soulbox.core.schemas import InvocationRecord


class ResultWaiter:
    def __init__(self, nc: NATS, invocations: KeyValue) -> None:
        self._inbox = Inbox(nc)
        self._kv = invocations

    async def start(self) -> None:
        await self._inbox.start()

    async def stop(self) -> None:
        await self._inbox.stop()

    def reply_subject(self, invocation_id: str) -> str:
        return self._inbox.subject(invocation_id)

    def expect(self, invocation_id: str) -> asyncio.Future[Msg]:
        """Register interest before submitting, so a fast result is not missed."""
        return self._inbox.expect(invocation_id)

    def discard(self, invocation_id: str) -> None:
        self._inbox.discard(invocation_id)

    @staticmethod
    def record(msg: Msg) -> InvocationRecord:
        return decode(InvocationRecord, msg.data)

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
            await watcher.stop()  # type: ignore[no-untyped-call]
        return None
