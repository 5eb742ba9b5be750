"""Batched pulls from a durable consumer, without a wait per message.

nats-py's ``PullSubscription.fetch(n)`` awaits every message of the batch
with its own ``asyncio.wait_for`` (two tasks per message), which costs more
CPU than everything a recorder does with the message. This fetcher sends the
pull request itself (``$JS.API.CONSUMER.MSG.NEXT``) and collects what the
server delivers on one inbox in a plain list:

    fetch(n):  buffered messages? ──yes──────────────────────────────┐
                   │ no                                               │
               the last batch was short: sleep ``linger`` first       │
               request {batch: n, no_wait} ──> messages … then a 404  │
                   │ none came                                        │
               request {batch: n, expires} ──> the first message ─────┤
                                                                      v
               take up to n (a request still delivering: wait up to ``linger`` for it to fill)
               a full batch and nothing requested: request {batch: n, no_wait} now (prefetch),
               so that the next batch arrives while this one is recorded

A consumer that keeps up with its producers thus pulls every ``linger``
seconds what gathered on the server meanwhile, in one burst (one read, one
round trip for the recorder) instead of event by event; under a backlog every
fetch is a full batch that was already on its way. Messages that arrive after
a fetch returned (a long poll still open) stay in the buffer for the next
fetch, so nothing delivered is ever dropped; ``stop`` hands the buffered ones
back to the server (nak) for immediate redelivery.

With ``group``, the durable is a *pinned-client* priority group (nats-server
2.11+): the server delivers to one subscription at a time, the one it pinned
(its id comes in the ``Nats-Pin-Id`` header and goes back in every request);
any other fetcher's requests wait until the pinned one has sent no request for
the group's ``priority_timeout``. A fetcher told it lost the pin (status 423)
hands its buffer back and asks again without an id.
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

    def __init__(self, nc: NATS, *, stream: str, durable: str, group: str | None = None) -> None:
        self._nc = nc
        self._group = group
        self.pin: str | None = None
        """The id the server pinned this fetcher with (None: not pinned, or no group)."""
        self.unpins = 0
        """How often the server told this fetcher that another one holds the pin."""
        self.taken_unpins = 0
        """``unpins`` when the last batch was taken: a batch taken before an unpin is no longer ours."""
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._unpin_subject = f"$JS.API.CONSUMER.UNPIN.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._outstanding = 0  # messages the open pull request may still deliver (0: none open)
        self._expires_at = 0.0  # when the server ends the open request at the latest
        self._ended = asyncio.Event()
        self._short = False  # the last batch taken held fewer messages than asked for

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop listening, nak what is buffered and give up the pin; safe to call more than once."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()
        buffered, self._buffer = self._buffer, []
        for msg in buffered:  # not recorded: redelivered at once rather than after the ack wait
            await msg.nak()
        if self.pin is not None and self._group is not None:
            # A standby takes over now instead of after the group's priority timeout.
            self.pin = None
            await self._nc.request(self._unpin_subject, json.dumps({"group": self._group}).encode(), timeout=5)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None and msg.reply:
            if headers and self._group is not None and (pin := headers.get("Nats-Pin-Id")):
                self.pin = pin
            self._buffer.append(msg)
            self._arrived.set()
            if self._outstanding > 0:
                self._outstanding -= 1
                if self._outstanding == 0:  # the request is fulfilled: no status follows
                    self._ended.set()
        elif status in ("404", "408", "409"):  # no messages / request expired / consumer changed
            self._outstanding = 0
            self._ended.set()
        elif status == "423":  # another subscription holds the pin: what we hold is no longer ours
            self.pin = None
            self.unpins += 1
            self._outstanding = 0
            self._ended.set()
            buffered, self._buffer = self._buffer, []
            self._arrived.clear()
            for stale in buffered:
                await stale.nak()
        # 100 (heartbeat) and anything else: nothing to do

    @property
    def buffered(self) -> list[Msg]:
        """The messages delivered and not yet taken (a copy)."""
        return list(self._buffer)

    def _take(self, n: int) -> list[Msg]:
        self.taken_unpins = self.unpins
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
        if self._group is not None:
            body["group"] = self._group
            if self.pin is not None:
                body["id"] = self.pin
        await self._nc.publish(self._subject, json.dumps(body).encode(), reply=self._inbox)

    async def fetch(self, n: int, *, timeout: float, linger: float = 0.0) -> list[Msg]:
        """Up to ``n`` messages; an empty list when none came within ``timeout``.

        After a short batch, the next fetch first lets ``linger`` seconds of
        messages gather on the server.
        """
        if self._sub is None:
            raise RuntimeError("the fetcher is not started")
        if self._outstanding and asyncio.get_running_loop().time() > self._expires_at + 1.0:
            self._outstanding = 0  # its end was lost (a reconnect): ask again
        if not self._buffer and self._outstanding == 0:
            if self._short and linger > 0:
                await asyncio.sleep(linger)
            await self._request(n, no_wait=True, expires=timeout)
            await self._wait(self._ended, timeout)  # the server ends a no_wait request at once
        if not self._buffer:
            if self._outstanding == 0:
                await self._request(n, no_wait=False, expires=timeout)
            await self._wait_any(timeout)
            if not self._buffer:
                return []
        if linger > 0 and len(self._buffer) < n and self._outstanding:
            await self._wait(self._ended, linger)  # a request still delivering: let it fill the batch
        batch = self._take(n)
        self._short = len(batch) < n
        if not self._short and self._outstanding == 0 and not self._buffer:
            await self._request(n, no_wait=True, expires=timeout)  # prefetch: there is probably more
        return batch

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
