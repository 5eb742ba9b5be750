"""The sandboxes one worker hosts: hand-outs from the warm pool, lifecycle, timeouts and records.

Requests arrive over core NATS on the worker's own subjects
(:func:`~soulbox.core.names.worker_sandbox_subject`): ``create`` from a
scheduler that placed the sandbox here, ``control`` from the gateway (kill,
pause, resume, set_timeout, metrics). The :class:`SandboxRecord` of every hosted
sandbox is kept current in the sandboxes bucket, where the gateway reads it;
it is deleted when the sandbox ends.

A create takes a ready box from the pool (:mod:`.pool`), then at once puts the
record, stores the ``sandbox.created`` event and (only with env vars) calls
envd: it answers once all are done. A kill answers once the box is dead, its
``sandbox.killed`` event stored and its record deleted; cgroup, uid, run
directory and log are freed after, off the caller's path (``close`` waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Coroutine
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from soulbox.core import names, tracing
from soulbox.core.codec import decode, encode
from soulbox.core.errors import Conflict, InvalidRequest, NotFound, Overloaded, SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import (
    SandboxControl,
    SandboxCreate,
    SandboxLogLine,
    SandboxRecord,
    SandboxReply,
    SandboxState,
)
from soulbox.core.sandboxlog import SandboxLogPublisher
from soulbox.core.schemas import EventType, LifecycleEvent, utcnow
from soulbox.core.secrets_store import SecretStore
from soulbox.core.settings import Settings
from soulbox.core.store import publish_event, settle

from ..instruments import StartKind, WorkerInstruments
from ..linux.envd.main import VERSION as ENVD_VERSION
from ..linux.netpolicy import EgressPolicy
from ..linux.sandbox import Launcher
from .hosted import Hosted, cpu_ns, usage_batch
from .pool import BoxStarter, ReadyBox, WarmPool
from .templates import Templates

log = get_logger(__name__)

METRICS_INTERVAL_S = 1.0
# A hand-out's first commands follow at once: a new box's start (~80 ms of CPU) waits not to compete.
REFILL_DELAY_S = 0.25


class SandboxHost:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        kv: KeyValue,
        launcher: Launcher,
        templates: Templates,
        *,
        instruments: WorkerInstruments | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self.settings = settings.sandboxes
        self._secrets = secrets
        self.worker_id = settings.worker.id
        self._nc = nc
        self._js = nc.jetstream()
        self._kv = kv
        self._templates = templates
        self._starter = BoxStarter(self.settings, launcher, instruments)
        self.pool = WarmPool(self.settings, self._starter, templates, lambda: self.count < self.settings.capacity)
        self._hosted: dict[str, Hosted] = {}
        self._creating: dict[str, asyncio.Future[SandboxRecord]] = {}  # a retried create joins the first
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()  # cancelled at close
        self._teardowns: set[asyncio.Task[None]] = set()  # boxes being freed: awaited at close
        self._closed = False
        self._instruments = instruments
        if instruments is not None:
            instruments.watch_sandboxes(lambda: self.in_use, lambda: len(self.pool))

    @property
    def count(self) -> int:
        """Sandboxes held now: handed out, being handed out, pooled and being started."""
        return len(self._hosted) + len(self._creating) + len(self.pool) + self._starter.starting

    @property
    def in_use(self) -> int:
        return len(self._hosted)

    def get(self, sandbox_id: str) -> Hosted | None:
        return self._hosted.get(sandbox_id)

    async def start(self) -> None:
        for action, cb in (("create", self._on_create), ("control", self._on_control)):
            self._subs.append(await self._nc.subscribe(names.worker_sandbox_subject(self.worker_id, action), cb=cb))
        self._spawn(self._sample_forever())
        self.refill("base", after=0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in self._subs:
            await sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sandbox_id in list(self._hosted):
            await self._end(sandbox_id, "worker stopping")
        await asyncio.gather(*self._teardowns, return_exceptions=True)
        await self.pool.close()

    def refill(self, template: str, *, after: float = REFILL_DELAY_S) -> None:
        """Top the template's warm pool up in the background, ``after`` seconds from now."""
        if self.settings.pool_size and not self._closed and template in Templates.NAMES:
            self._spawn(self._refill(template, after))

    async def _refill(self, template: str, after: float) -> None:
        await asyncio.sleep(after)
        await self.pool.fill(template)

    # Requests --------------------------------------------------------------------------------

    @tracing.handler("sandbox create")
    async def _on_create(self, msg: Msg) -> None:
        request: SandboxCreate | None = None
        try:
            request = decode(SandboxCreate, msg.data)
            reply = SandboxReply(record=await self.create(request))
        except SoulboxError as exc:
            reply = SandboxReply(error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            log.exception("sandbox.create_failed")
            reply = SandboxReply(error_code="sandbox_error", error_message=f"the sandbox could not start: {exc}")
        await msg.respond(encode(reply.model_copy(update={"sandboxes": self.in_use})))
        if request is not None:  # only now: starting a box takes CPU the answer should not wait for
            self.refill(request.template)

    async def _on_control(self, msg: Msg) -> None:
        try:
            reply = await self.control(decode(SandboxControl, msg.data))
        except SoulboxError as exc:
            reply = SandboxReply(error_code=exc.code, error_message=exc.message)
        await msg.respond(encode(reply))

    async def create(self, request: SandboxCreate) -> SandboxRecord:
        """Hand a sandbox out for ``request``: stored and announced on return (the pool: :meth:`refill`)."""
        if self._closed:
            raise Overloaded("this worker is stopping")
        if request.sandbox_id in self._hosted:
            return self._hosted[request.sandbox_id].record  # a retried create: the same sandbox
        if (first := self._creating.get(request.sandbox_id)) is not None:
            return await asyncio.shield(first)
        future: asyncio.Future[SandboxRecord] = asyncio.get_running_loop().create_future()
        self._creating[request.sandbox_id] = future
        try:
            record = await self._create(request)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a create nobody retried must not warn
            raise
        finally:
            del self._creating[request.sandbox_id]
        future.set_result(record)
        return record

    async def _create(self, request: SandboxCreate) -> SandboxRecord:
        env = await self._env(request)
        template = await self._templates.get(request.template)
        egress = _egress(request)
        # Warm boxes have no network; one with egress starts in a namespace of the launcher's pool.
        ready = await self.pool.take(template.name) if egress is None else None
        kind: StartKind = "warm"
        if ready is None:
            if self.count > self.settings.capacity:  # this create is counted already
                raise Overloaded(f"worker {self.worker_id} hosts {self.settings.capacity} sandboxes already")
            ready = await self._starter.start(template, egress=egress, env=env)
            kind = "cold"
        tracing.set_attribute("soulbox.cold_start", kind == "cold")
        now = utcnow()
        record = SandboxRecord(
            sandbox_id=request.sandbox_id,
            tenant=request.tenant,
            template=template.name,
            worker_id=self.worker_id,
            state=SandboxState.RUNNING,
            started_at=now,
            end_at=now + timedelta(seconds=request.timeout_s),
            auto_pause=request.auto_pause,
            metadata=request.metadata,
            cpu_count=self.settings.cpu_count,
            memory_mb=self.settings.memory_mb,
            disk_mb=self.settings.disk_mb,
            envd_version=ENVD_VERSION,
            access_token=ready.token,
            traffic_token=secrets.token_urlsafe(24),
            network=request.network if egress is not None else None,
        )
        hosted = Hosted(ready.box, record, ready.envd, period_cpu_ns=cpu_ns(ready.box))
        steps: list[Awaitable[object]] = [self._save(record), self._store(hosted.event(EventType.SANDBOX_CREATED))]
        if env and not ready.env_sent:
            steps.append(ready.envd.init(env, ready.token))
        outcomes = await asyncio.gather(*steps, return_exceptions=True)
        if failed := [o for o in outcomes if isinstance(o, BaseException)]:
            await self._undo(hosted, ready, announced=not isinstance(outcomes[1], BaseException))
            raise failed[0]
        self._hosted[request.sandbox_id] = hosted  # reachable on the data plane from now on
        hosted.publish_log(SandboxLogPublisher(self._js, tenant=request.tenant, sandbox_id=request.sandbox_id))
        self._arm(hosted, request.timeout_s)
        self._spawn(self._watch(request.sandbox_id, hosted))
        if self._instruments is not None:
            self._instruments.handed_out(template.name, kind)
        log.info("sandbox.created", sandbox=request.sandbox_id, template=template.name, tenant=request.tenant)
        return record

    async def _env(self, request: SandboxCreate) -> dict[str, str]:
        """The request's env vars with its secrets opened (before a box is taken: a missing one costs nothing)."""
        env = dict(request.env_vars)
        if request.secrets:
            if self._secrets is None:
                raise InvalidRequest("this worker has no secrets store")
            env.update(
                await self._secrets.reveal(
                    self._js,
                    request.tenant,
                    request.secrets,
                    actor=f"sandbox:{request.sandbox_id}",
                    source=f"worker:{self.worker_id}",
                    detail={"sandbox_id": request.sandbox_id},
                )
            )
        return env

    async def _undo(self, hosted: Hosted, ready: ReadyBox, *, announced: bool) -> None:
        """A create that failed half-way: no box, no record, and a created event answered by a killed one."""
        await ready.close()
        with contextlib.suppress(Exception):
            await self._kv.delete(hosted.record.sandbox_id)
        if announced:
            with contextlib.suppress(Exception):
                await self._store(hosted.event(EventType.SANDBOX_KILLED, billed=True, reason="start failed"))

    async def control(self, request: SandboxControl) -> SandboxReply:
        hosted = self._hosted.get(request.sandbox_id)
        if hosted is None:
            raise NotFound(f"sandbox {request.sandbox_id!r} is not running", code="sandbox_not_found")
        record = hosted.record
        if request.op == "kill":
            await self._end(request.sandbox_id, "killed")
            return SandboxReply(record=record)
        if request.op == "metrics":
            return SandboxReply(record=record, metrics=[*hosted.samples, hosted.sample()])
        if request.op == "logs":
            lines = [SandboxLogLine(at=line.at, level=line.level, message=line.text) for line in hosted.box.log.lines()]
            return SandboxReply(record=record, logs=lines)
        if request.op == "pause":
            if record.state == SandboxState.PAUSED:
                raise Conflict(f"sandbox {request.sandbox_id!r} is already paused", code="sandbox_paused")
            await self._pause(hosted)
        elif request.op == "resume":
            if record.state == SandboxState.RUNNING:
                if request.timeout_s:
                    self._arm(hosted, request.timeout_s)
                    await self._update(hosted, end_at=utcnow() + timedelta(seconds=request.timeout_s))
                return SandboxReply(record=hosted.record)
            hosted.box.thaw()
            remaining = request.timeout_s or int(record.remaining_s or self.settings.default_timeout_s)
            self._arm(hosted, remaining)
            await self._update(
                hosted, state=SandboxState.RUNNING, end_at=utcnow() + timedelta(seconds=remaining), remaining_s=None
            )
            hosted.start_period()
            await self._store(hosted.event(EventType.SANDBOX_RESUMED))
            log.info("sandbox.resumed", sandbox=request.sandbox_id)
        elif request.op == "set_timeout":
            if request.timeout_s is None:
                raise InvalidRequest("set_timeout needs timeout_s")
            if record.state == SandboxState.PAUSED:
                await self._update(hosted, remaining_s=float(request.timeout_s))
            else:
                self._arm(hosted, request.timeout_s)
                await self._update(hosted, end_at=utcnow() + timedelta(seconds=request.timeout_s))
        return SandboxReply(record=hosted.record)

    # Lifecycle -------------------------------------------------------------------------------

    def _arm(self, hosted: Hosted, timeout_s: float) -> None:
        if hosted.deadline is not None:
            hosted.deadline.cancel()
        sandbox_id = hosted.record.sandbox_id
        hosted.deadline = asyncio.get_running_loop().call_later(
            timeout_s, lambda: self._spawn(self._expire(sandbox_id))
        )

    async def _expire(self, sandbox_id: str) -> None:
        hosted = self._hosted.get(sandbox_id)
        if hosted is None:
            return
        if hosted.record.auto_pause and hosted.record.state == SandboxState.RUNNING:
            await self._pause(hosted)
        else:
            await self._end(sandbox_id, "timeout")

    async def _pause(self, hosted: Hosted) -> None:
        if hosted.deadline is not None:
            hosted.deadline.cancel()
            hosted.deadline = None
        await hosted.box.freeze()
        remaining = max(1.0, (hosted.record.end_at - utcnow()).total_seconds())
        await self._update(hosted, state=SandboxState.PAUSED, remaining_s=remaining)
        await self._store(hosted.event(EventType.SANDBOX_PAUSED, billed=True))
        log.info("sandbox.paused", sandbox=hosted.record.sandbox_id)

    async def _watch(self, sandbox_id: str, hosted: Hosted) -> None:
        await hosted.box.ended()
        if self._hosted.get(sandbox_id) is hosted:
            await self._end(sandbox_id, "exited")

    async def _end(self, sandbox_id: str, reason: str) -> None:
        """Kill the sandbox; once it is dead, its killed event stored and its record gone, free it in the background."""
        hosted = self._hosted.pop(sandbox_id, None)
        if hosted is None:
            return
        if hosted.deadline is not None:
            hosted.deadline.cancel()
        running = hosted.record.state == SandboxState.RUNNING
        hosted.box.kill()
        event = hosted.event(EventType.SANDBOX_KILLED, billed=running, reason=reason)
        dead, stored, _ = await asyncio.gather(
            hosted.box.dead(), self._store(event), self._kv.delete(sandbox_id), return_exceptions=True
        )
        if isinstance(stored, BaseException):  # NATS away: the sandbox still ends (the event is lost, logged)
            log.warning("sandbox.event_not_published", sandbox=sandbox_id, error=repr(stored))
        if dead is not True:
            log.warning("sandbox.not_dead_yet", sandbox=sandbox_id)  # the teardown below kills it again
        # NATS away: the record dies with this worker's liveness (the gateway drops records of dead workers).
        task = asyncio.ensure_future(self._free(hosted))
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)
        log.info("sandbox.ended", sandbox=sandbox_id, reason=reason)

    async def _free(self, hosted: Hosted) -> None:
        """What a dead sandbox still holds: its log's last batch, envd client, cgroup, uid and run directory."""
        try:
            await hosted.close_log()
            await hosted.envd.aclose()
        finally:
            await hosted.box.close()

    async def _store(self, event: LifecycleEvent) -> None:
        """Publish a lifecycle event and wait until it is stored."""
        await settle([await publish_event(self._js, event)])

    async def _update(self, hosted: Hosted, **changes: object) -> None:
        hosted.record = hosted.record.model_copy(update=changes)
        await self._save(hosted.record)

    async def _save(self, record: SandboxRecord) -> None:
        await self._kv.put(record.sandbox_id, encode(record))

    # Metrics ---------------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        """Every second: a sample per running sandbox, kept for the metrics API and published as one batch."""
        subject = names.sandbox_metrics_subject(self.worker_id)
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            batch = usage_batch(self.worker_id, list(self._hosted.values()))
            with contextlib.suppress(Exception):  # telemetry: a tick lost to a reconnect is not worth more
                await self._nc.publish(subject, encode(batch))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _egress(request: SandboxCreate) -> EgressPolicy | None:
    """The request's egress policy (``InvalidRequest`` for a bad entry), or None: no network."""
    network = request.network
    if network is None or not network.enabled:
        return None
    return EgressPolicy.of_request(internet=network.internet, allow_out=network.allow_out, deny_out=network.deny_out)
