"""Per-function concurrency limits, held across every scheduler.

A function with ``max_concurrency`` has one key in the concurrency bucket:
the leases of its running invocations. A scheduler takes a lease by
compare-and-set before dispatching and gives it back when the attempt ends;
a lease expires after the invocation's deadline (plus grace), so one left by
a dead scheduler frees itself. Invocations over the limit wait, unacked,
in this scheduler (progress keeps JetStream from redelivering them); only
the first of them polls the bucket, the rest wait their turn in memory.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import decode, encode
from soulbox.core.schemas import ConcurrencyLeases, InvocationRequest, utcnow

POLL_S = 0.02  # between looks at a full function; jittered so waiters do not move in lockstep
PROGRESS_S = 5.0


class ConcurrencyGate:
    def __init__(self, kv: KeyValue, *, grace_s: float) -> None:
        self._kv = kv
        self._grace_s = grace_s
        self._turns: dict[str, asyncio.Lock] = {}

    async def hold(self, request: InvocationRequest, msg: Msg) -> bool:
        """Wait for a lease (True), or return False at once when the function has no limit."""
        limit = request.function.max_concurrency
        if limit is None:
            return False
        # One waiter per function polls the bucket; the others queue behind it here, in order.
        turn = self._turns.setdefault(names.function_key(request.tenant, request.function.name), asyncio.Lock())
        while True:
            try:
                await asyncio.wait_for(turn.acquire(), PROGRESS_S)
                break
            except TimeoutError:
                await msg.in_progress()  # still wanted: JetStream must not redeliver it meanwhile
        try:
            loop = asyncio.get_running_loop()
            last_progress = loop.time()
            while not await self._try(request, limit):
                if loop.time() - last_progress > PROGRESS_S:
                    await msg.in_progress()
                    last_progress = loop.time()
                await asyncio.sleep(POLL_S * (0.5 + random.random()))
        finally:
            turn.release()
        return True

    async def _try(self, request: InvocationRequest, limit: int) -> bool:
        key = names.function_key(request.tenant, request.function.name)
        now = utcnow()
        expires = now + timedelta(seconds=request.function.limits.timeout_ms / 1000 + self._grace_s)
        while True:
            revision, leases = await self._read(key)
            live = {k: v for k, v in leases.items() if v > now}
            if request.id not in live and len(live) >= limit:
                return False
            live[request.id] = expires
            if await self._write(key, revision, live):
                return True

    async def release(self, request: InvocationRequest) -> None:
        key = names.function_key(request.tenant, request.function.name)
        while True:
            revision, leases = await self._read(key)
            if request.id not in leases:
                return
            now = utcnow()
            live = {k: v for k, v in leases.items() if v > now and k != request.id}
            if await self._write(key, revision, live):
                return

    async def _read(self, key: str) -> tuple[int | None, dict[str, datetime]]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None, {}
        if not entry.value:
            return entry.revision, {}
        return entry.revision, dict(decode(ConcurrencyLeases, entry.value).leases)

    async def _write(self, key: str, revision: int | None, leases: dict[str, datetime]) -> bool:
        value = encode(ConcurrencyLeases(leases=leases))
        try:
            if revision is None:
                await self._kv.create(key, value)
            else:
                await self._kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True
