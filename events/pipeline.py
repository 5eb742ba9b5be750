"""Pipelined JetStream publishes whose failures come back as values.

nats-py's ``publish_async`` cannot report a server-side rejection: its reply
handler *raises* the API error inside the subscription callback instead of
setting it on the future, so a publish refused by an expected-sequence check
never completes. The audit chain needs exactly those refusals (they mean
another writer got there first), so it publishes through this module: one
reply subscription per connection, one core publish per message with a reply
subject, and the server's JSON answer parsed here.

``publish_atomic`` sends a whole batch as one JetStream atomic batch
(nats-server 2.12+, a stream with ``allow_atomic``): the server stores all of
it or none, checks a ``Nats-Expected-Last-Sequence`` on the first message
against the stream as it was before the batch, and answers twice per batch
(an empty reply to the first message, a pub ack to the commit) instead of once
per message.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from soulbox.core.errors import Unavailable

WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_MSG_ID = 10070
BATCH_DUPLICATE_MSG_ID = 10201
"""An atomic batch held a message id the stream had seen (within its duplicate window): nothing stored."""

ATOMIC_BATCH_MAX = 1000
"""The most messages nats-server takes in one atomic batch."""


@dataclass(frozen=True, slots=True)
class Stored:
    """The server stored the message (or had it already: ``duplicate``)."""

    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The server refused the message; ``err_code`` is JetStream's error code."""

    err_code: int
    description: str


Outcome = Stored | Refused


@dataclass(frozen=True, slots=True)
class Publish:
    subject: str
    payload: bytes
    headers: Mapping[str, str]


class Publisher:
    """Publishes batches on ``nc`` and returns every message's outcome, in order."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._sub: Subscription | None = None
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}
        self._counter = 0

    async def _ensure(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._reply)

    async def close(self) -> None:
        """Stop listening for replies; safe to call more than once."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def _reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_result(Refused(503, "no stream listens on the subject"))
            return
        if not msg.data:  # an atomic batch's first message was taken in
            future.set_result(Stored(0, False))
            return
        try:
            body = json.loads(msg.data)
        except ValueError:
            future.set_result(Refused(0, f"unreadable reply {msg.data[:80]!r}"))
            return
        error = body.get("error")
        if error is not None:
            future.set_result(Refused(int(error.get("err_code", 0)), str(error.get("description", ""))))
        else:
            future.set_result(Stored(int(body["seq"]), bool(body.get("duplicate", False))))

    def _expect(self, loop: asyncio.AbstractEventLoop) -> tuple[str, asyncio.Future[Outcome]]:
        self._counter += 1
        token = str(self._counter)
        future: asyncio.Future[Outcome] = loop.create_future()
        self._waiting[token] = future
        return token, future

    async def _wait(self, tokens: list[str], futures: list[asyncio.Future[Outcome]], timeout: float) -> None:
        _done, pending = await asyncio.wait(futures, timeout=timeout)
        if pending:
            for token, future in zip(tokens, futures, strict=True):
                future.cancel()
                self._waiting.pop(token, None)
            raise Unavailable(f"{len(pending)} of {len(futures)} publishes not answered within {timeout}s")

    async def publish_atomic(
        self, messages: Sequence[Publish], *, expected_last_seq: int, timeout: float = 5.0
    ) -> Outcome:
        """Store ``messages`` (at most ``ATOMIC_BATCH_MAX``) as one atomic batch, only right after
        ``expected_last_seq``; ``Stored.seq`` is the sequence of the last one.

        Raises ``Unavailable`` when the answer does not arrive in time (the
        batch may or may not be stored).
        """
        if not 0 < len(messages) <= ATOMIC_BATCH_MAX:
            raise ValueError(f"an atomic batch holds 1 to {ATOMIC_BATCH_MAX} messages, not {len(messages)}")
        await self._ensure()
        loop = asyncio.get_running_loop()
        batch = uuid.uuid4().hex
        last = len(messages)
        tokens: list[str] = []
        futures: list[asyncio.Future[Outcome]] = []
        for n, message in enumerate(messages, 1):
            headers = {**message.headers, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(n)}
            if n == 1:
                headers["Nats-Expected-Last-Sequence"] = str(expected_last_seq)
            if n == last:
                headers["Nats-Batch-Commit"] = "1"
            reply = ""
            if n in (1, last):  # the first must be a request; the rest are only answered at the commit
                token, future = self._expect(loop)
                tokens.append(token)
                futures.append(future)
                reply = f"{self._prefix}.{token}"
            await self._nc.publish(message.subject, message.payload, reply=reply, headers=headers)
        await self._wait(tokens, futures, timeout)
        first, commit = futures[0].result(), futures[-1].result()
        return first if isinstance(first, Refused) else commit

    async def publish(self, messages: Sequence[Publish], *, timeout: float = 5.0) -> list[Outcome]:
        """Send every message without waiting, then wait (at most ``timeout``) for every reply.

        Raises ``Unavailable`` when a reply does not arrive in time: the
        message may or may not be stored, so the caller must find out.
        """
        await self._ensure()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = []
        tokens: list[str] = []
        for message in messages:
            token, future = self._expect(loop)
            futures.append(future)
            tokens.append(token)
            await self._nc.publish(
                message.subject, message.payload, reply=f"{self._prefix}.{token}", headers=dict(message.headers)
            )
        if not futures:
            return []
        await self._wait(tokens, futures, timeout)
        return [future.result() for future in futures]
