"""One wildcard inbox subscription per process, replies routed to futures by token.

Used for every reply a component waits for (a dispatch's completion, an
invocation's record): one subscription and a dict lookup per reply, no task
per request, and the caller chooses the token (so a reply can be matched to
an invocation and attempt, and awaited next to other events).
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class Inbox:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._waiters: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for future in self._waiters.values():
            future.cancel()
        self._waiters.clear()

    def subject(self, token: str) -> str:
        """The reply subject for ``token`` (a single subject token: no dots)."""
        return f"{self._prefix}.{token}"

    def expect(self, token: str) -> asyncio.Future[Msg]:
        """Register interest before sending, so a fast reply is not missed."""
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiters[token] = future
        return future

    def discard(self, token: str) -> None:
        future = self._waiters.pop(token, None)
        if future is not None and not future.done():
            future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._waiters.pop(token, None)
        if future is not None and not future.done():
            future.set_result(msg)
