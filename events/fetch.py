"""Batched pulls from a durable consumer, without a wait per message.

nats-py's ``PullSubscription.fetch(n)`` awaits every message of the batch
with its own ``asyncio.wait_for`` (two tasks per message), which costs more
CPU than everything a recorder does with the message. This fetcher sends the
pull request itself (``$JS.API.CONSUMER.MSG.NEXT``) and collects what the
server delivers on one inbox in a plain list:

    fetch(n):  buffered messages? ──yes──> return them (at most n)
                   │ no
               request {batch: n, no_wait} ──> messages … then a 404/408 status ──> return
                   │ none came
               request {batch: n, expires} ──> return as soon as any message arrived
                                                (or at the status that ends the request)

Messages that arrive after a fetch returned (a long poll still open) stay in
the buffer for the next fetch, so nothing delivered is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class BatchFetcher:
    """Pulls batches from ``durable`` on ``stream`` over ``nc``."""

    def __init__(self, nc: NATS, *, stream: str, durable: str) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._outstanding = 0  # messages the open pull request may still deliver (0: none open)
        self._expires_at = 0.0  # when the server ends the open request at the latest
        self._ended = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop listening; safe to call more than once (unacked messages are redelivered later)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None and msg.reply:
            self._buffer.append(msg)
            self._arrived.set()
            if self._outstanding > 0:
                self._outstanding -= 1
                if self._outstanding == 0:  # the request is fulfilled: no status follows
                    self._ended.set()
        elif status in ("404", "408", "409"):  # no messages / request expired / consumer changed
            self._outstanding = 0
            self._ended.set()
        # 100 (heartbeat) and anything else: nothing to do

    def _take(self, n: int) -> list[Msg]:
        taken, self._buffer = self._buffer[:n], self._buffer[n:]
        if not self._buffer:
            self._arrived.clear()
        return taken

    async def _request(self, n: int, *, no_wait: bool, expires: float) -> None:
        self._ended.clear()
        self._outstanding = n
        self._expires_at = asyncio.get_running_loop().time() + expires
        # no_wait: the server answers at once (messages, then a 404 when it has fewer than n);
        # with expires as well it would hold the request open like a long poll.
        body: dict[str, object] = (
            {"batch": n, "no_wait": True} if no_wait else {"batch": n, "expires": int(expires * 1e9)}
        )
        await self._nc.publish(self._subject, json.dumps(body).encode(), reply=self._inbox)

    async def fetch(self, n: int, *, timeout: float) -> list[Msg]:
        """Up to ``n`` messages; an empty list when none came within ``timeout``."""
        if self._sub is None:
            raise RuntimeError("the fetcher is not started")
        if self._buffer:
            return self._take(n)
        if self._outstanding and asyncio.get_running_loop().time() > self._expires_at + 1.0:
            self._outstanding = 0  # its end was lost (a reconnect): ask again
        if self._outstanding == 0:
            await self._request(n, no_wait=True, expires=timeout)
            await self._wait(self._ended, timeout)  # the server ends a no_wait request at once
            if self._buffer:
                return self._take(n)
        if self._outstanding == 0:
            await self._request(n, no_wait=False, expires=timeout)
        await self._wait_any(timeout)
        return self._take(n)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _wait_any(self, timeout: float) -> None:
        """Until a message arrives or the open request ends."""
        arrived = asyncio.ensure_future(self._arrived.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({arrived, ended}, timeout=timeout + 0.5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
            ended.cancel()
