"""The scheduler's live view of workers.

Liveness comes from heartbeats on a core NATS subject (re-subscribed by the
client on every reconnect, so it does not depend on JetStream consumers
surviving a server restart); the workers bucket, which keeps the last
heartbeat of every worker, seeds the view at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import WorkerHeartbeat
from soulbox.core.store import scan

from .placement import WorkerView

log = get_logger(__name__)


class WorkerDirectory:
    """Workers heard from in the last ``ttl`` seconds.

    A worker is dead once its last heartbeat is older than ``ttl`` or it says
    it is draining. ``death(worker_id)`` gives a future that resolves when
    that happens, so a scheduler waiting on a dispatch can give up on a dead
    worker at once instead of waiting for the deadline.
    """

    def __init__(self, nc: NATS, kv: KeyValue, *, ttl: float) -> None:
        self._nc = nc
        self._kv = kv
        self._ttl = ttl
        self._seen: dict[str, tuple[float, WorkerHeartbeat]] = {}
        self._deaths: dict[str, list[asyncio.Future[None]]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._sub: Subscription | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(names.WORKER_HEARTBEAT_SUBJECT, cb=self._on_heartbeat)
        # Seed from the bucket; entries older than the ttl are aged out by the reaper.
        now_wall = time.time()
        async for _, beat in scan(self._kv, ">", WorkerHeartbeat):
            age = max(0.0, now_wall - beat.at.timestamp())
            if beat.worker_id not in self._seen and age < self._ttl and not beat.draining:
                self._seen[beat.worker_id] = (time.monotonic() - age, beat)
        self._reaper = asyncio.create_task(self._reap())

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode(WorkerHeartbeat, msg.data)
        except SchemaError as exc:
            log.warning("scheduler.bad_heartbeat", error=exc.message)
            return
        if beat.draining:
            self._mark_dead(beat.worker_id)
            return
        if beat.worker_id not in self._seen:
            log.info("scheduler.worker_joined", worker=beat.worker_id, capacity=beat.capacity)
        self._seen[beat.worker_id] = (time.monotonic(), beat)
        self._notify()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self._ttl / 4))
            cutoff = time.monotonic() - self._ttl
            for worker_id, (seen, _) in list(self._seen.items()):
                if seen < cutoff:
                    log.warning("scheduler.worker_lost", worker=worker_id)
                    self._mark_dead(worker_id)

    def _mark_dead(self, worker_id: str) -> None:
        self._seen.pop(worker_id, None)
        for future in self._deaths.pop(worker_id, []):
            if not future.done():
                future.set_result(None)

    def live(self) -> list[WorkerView]:
        return [
            WorkerView(
                worker_id=beat.worker_id,
                tiers=frozenset(beat.tiers),
                capacity=beat.capacity,
                reported_in_flight=beat.in_flight,
                sandbox_capacity=beat.sandbox_capacity,
                sandboxes=beat.sandboxes,
            )
            for _, beat in self._seen.values()
        ]

    def report_load(self, worker_id: str, in_flight: int) -> None:
        """A worker's load as its latest dispatch answer told it: a freed slot is usable before the next beat."""
        seen = self._seen.get(worker_id)
        if seen is not None:
            self._seen[worker_id] = (seen[0], seen[1].model_copy(update={"in_flight": in_flight}))

    def report_sandboxes(self, worker_id: str, sandboxes: int) -> None:
        """A worker's sandboxes in use, as its latest answer told it."""
        seen = self._seen.get(worker_id)
        if seen is not None:
            self._seen[worker_id] = (seen[0], seen[1].model_copy(update={"sandboxes": sandboxes}))

    def is_live(self, worker_id: str) -> bool:
        return worker_id in self._seen

    def death(self, worker_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if worker_id not in self._seen:
            future.set_result(None)
        else:
            self._deaths.setdefault(worker_id, []).append(future)
        return future

    def forget(self, worker_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._deaths.get(worker_id)
        if waiters and future in waiters:
            waiters.remove(future)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a heartbeat may have freed a slot (answers wake the scheduler itself)."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
