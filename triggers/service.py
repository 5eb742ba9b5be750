"""The trigger service: NATS-subject triggers and cron schedules.

Subjects: one queue subscription per trigger (group per trigger), so of
several replicas exactly one receives each message. A message with a reply
subject waits for the invocation and answers with the function's output
(headers ``Soulbox-Invocation-Id``, ``Soulbox-Status``).

Schedules: every replica computes the ticks; a tick fires only for the
replica that advances the trigger's last tick in the cron bucket by
compare-and-set, so a tick fires once however many replicas run. The stored
last tick is also what the missed-runs policy reads after downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core import names, tracing
from soulbox.core.codec import decode, encode
from soulbox.core.errors import SchemaError, SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import InvocationRecord, Status, utcnow
from soulbox.core.settings import Settings
from soulbox.core.triggerspecs import CronState, MissedRuns, TriggerKind, TriggerSpec

from . import cron
from .callbacks import CallbackDeliverer
from .catalog import TriggerCatalog
from .submit import Submitter

log = get_logger(__name__)

MAX_PENDING = 1024  # messages being submitted at once; past it the subscription callback waits
REPLY_GRACE_S = 5.0


def cron_invocation_id(tenant: str, trigger_id: str, tick: datetime) -> str:
    """The same id for the same (trigger, tick) everywhere: a repeat is dropped by the stream."""
    digest = hashlib.sha256(f"{tenant}.{trigger_id}".encode()).hexdigest()[:16]
    return f"{int(tick.timestamp() * 1000):012x}{digest}"


async def claim_tick(kv: KeyValue, key: str, tick: datetime) -> bool:
    """Advance the trigger's last tick to ``tick``; False if it is there (or past it) already."""
    while True:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            try:
                await kv.create(key, encode(CronState(tick=tick)))
                return True
            except KeyWrongLastSequenceError:
                continue
        if decode(CronState, entry.value).tick >= tick:
            return False
        try:
            await kv.update(key, encode(CronState(tick=tick)), last=entry.revision)
            return True
        except KeyWrongLastSequenceError:
            continue


class TriggerService:
    def __init__(self, settings: Settings, nc: NATS, cron_kv: KeyValue, catalog: TriggerCatalog, submitter: Submitter):
        self.settings = settings
        self._nc = nc
        self._cron_kv = cron_kv
        self._catalog = catalog
        self._submitter = submitter
        self._subs: dict[str, tuple[str, Subscription]] = {}
        self._due: dict[str, tuple[datetime, datetime]] = {}  # key -> (spec.updated_at, next tick)
        self._slots = asyncio.Semaphore(MAX_PENDING)
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()

    async def serve(self, *, callbacks: CallbackDeliverer | None = None) -> None:
        self._catalog.on_change(self._changed.set)
        delivering = asyncio.create_task(callbacks.serve(self._stopping)) if callbacks else None
        log.info("triggers.ready")
        while not self._stopping.is_set():
            self._changed.clear()
            await self._reconcile_subscriptions()
            wait = await self._run_schedules()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        for _, sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if delivering is not None:
            await delivering

    # NATS subjects ---------------------------------------------------------------

    async def _reconcile_subscriptions(self) -> None:
        wanted = {
            names.trigger_key(t.tenant, t.id): t.nats.subject
            for t in self._catalog.of_kind(TriggerKind.NATS)
            if t.nats is not None
        }
        for key, (subject, sub) in list(self._subs.items()):
            if wanted.get(key) != subject:
                del self._subs[key]
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        for key, subject in wanted.items():
            if key not in self._subs:
                tenant, trigger_id = key.split(".", 1)
                sub = await self._nc.subscribe(
                    subject, queue=names.triggers_queue_group(tenant, trigger_id), cb=self._receiver(key)
                )
                self._subs[key] = (subject, sub)
                log.info("triggers.subscribed", trigger=key, subject=subject)

    def _receiver(self, key: str) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            await self._slots.acquire()  # back-pressure: the client buffers, then drops as slow consumer
            task = asyncio.create_task(self._on_message(key, msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return receive

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("triggers.handler_crashed", error=repr(task.exception()))

    async def _on_message(self, key: str, msg: Msg) -> None:
        trigger = self._catalog.get(key)
        if trigger is None or not trigger.enabled:
            return
        wait = bool(msg.reply)
        try:
            spec = await self._submitter.function(trigger.tenant, trigger.function)
            invocation_id, result = await self._submitter.submit(
                spec, msg.data, trigger=trigger.id, wait=wait, parent=tracing.extract(msg.headers)
            )
        except SoulboxError as exc:
            log.warning("triggers.submit_failed", trigger=key, error=exc.message)
            if msg.reply:
                await self._answer(
                    msg.reply,
                    json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode(),
                    status="error",
                )
            return
        if result is None:
            return
        timeout = spec.limits.timeout_ms / 1000 + REPLY_GRACE_S
        try:
            record = decode(InvocationRecord, (await asyncio.wait_for(result, timeout)).data)
        except (TimeoutError, SchemaError):
            self._submitter.discard(invocation_id)
            await self._answer(msg.reply, b"", status="timed_out", invocation_id=invocation_id)
            return
        body = (
            record.stdout
            if record.status is Status.COMPLETED
            else (record.error.message.encode() if record.error else b"")
        )
        await self._answer(msg.reply, body, status=record.status.value, invocation_id=invocation_id)

    async def _answer(self, reply: str, body: bytes, *, status: str, invocation_id: str | None = None) -> None:
        headers = {"Soulbox-Status": status}
        if invocation_id:
            headers["Soulbox-Invocation-Id"] = invocation_id
        await self._nc.publish(reply, body, headers=headers)

    # Schedules -------------------------------------------------------------------

    async def _run_schedules(self) -> float:
        """Fire what is due; the seconds until the next tick (at most the horizon)."""
        now = utcnow()
        triggers = {names.trigger_key(t.tenant, t.id): t for t in self._catalog.of_kind(TriggerKind.CRON)}
        for key in set(self._due) - set(triggers):
            del self._due[key]
        horizon = self.settings.triggers.cron_horizon_s
        soonest = horizon
        for key, trigger in triggers.items():
            config = trigger.cron
            assert config is not None  # the kind says so
            known = self._due.get(key)
            if known is None or known[0] != trigger.updated_at:
                await self._catch_up(key, trigger, now)
                known = (trigger.updated_at, cron.next_tick(config, now))
            tick = known[1]
            if tick <= now:
                await self._fire(key, trigger, tick)
                tick = cron.next_tick(config, max(tick, now))  # after a stall, no burst of old ticks
            self._due[key] = (trigger.updated_at, tick)
            soonest = min(soonest, (tick - utcnow()).total_seconds())
        return max(0.0, soonest)

    async def _catch_up(self, key: str, trigger: TriggerSpec, now: datetime) -> None:
        """The missed-runs policy: ticks that passed while no trigger service ran."""
        config = trigger.cron
        assert config is not None
        if config.missed is not MissedRuns.RUN_ONCE:
            return
        try:
            entry = await self._cron_kv.get(key)
            since = decode(CronState, entry.value).tick if entry.value else trigger.created_at
        except KeyNotFoundError:
            since = trigger.created_at
        latest = cron.last_tick(config, now)
        if latest > since:
            log.info("triggers.cron_missed", trigger=key, tick=latest.isoformat(), since=since.isoformat())
            await self._fire(key, trigger, latest)

    async def _fire(self, key: str, trigger: TriggerSpec, tick: datetime) -> None:
        try:
            if not await claim_tick(self._cron_kv, key, tick):
                return  # another replica has it
            spec = await self._submitter.function(trigger.tenant, trigger.function)
            body = json.dumps({"trigger": trigger.id, "tick": tick.isoformat()}).encode()
            invocation_id = cron_invocation_id(trigger.tenant, trigger.id, tick)
            await self._submitter.submit(spec, body, trigger=trigger.id, invocation_id=invocation_id)
            log.info("triggers.cron_fired", trigger=key, tick=tick.isoformat(), invocation_id=invocation_id)
        except SoulboxError as exc:
            log.warning("triggers.cron_failed", trigger=key, tick=tick.isoformat(), error=exc.message)
        except Exception as exc:  # NATS trouble: this tick is lost, the next one is tried
            log.warning("triggers.cron_failed", trigger=key, tick=tick.isoformat(), error=repr(exc))
