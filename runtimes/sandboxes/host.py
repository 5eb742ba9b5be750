"""The sandboxes one worker hosts: a warm pool per template, lifecycle, timeouts and records.

Requests arrive over core NATS on the worker's own subjects
(:func:`~soulbox.core.names.worker_sandbox_subject`): ``create`` from a
scheduler that placed the sandbox here, ``control`` from the gateway (kill,
pause, resume, set_timeout, metrics). The :class:`SandboxRecord` of every hosted
sandbox is kept current in the sandboxes bucket, where the gateway reads it;
it is deleted when the sandbox ends. A sandbox is handed out from the pool:
started ahead of demand, then given its user's env vars and access token.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import decode, encode
from soulbox.core.errors import Conflict, InvalidRequest, NotFound, Overloaded, SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import (
    SandboxControl,
    SandboxCreate,
    SandboxLogLine,
    SandboxMetric,
    SandboxMetricsBatch,
    SandboxRecord,
    SandboxReply,
    SandboxState,
    SandboxUsage,
)
from soulbox.core.sandboxlog import SandboxLogPublisher
from soulbox.core.schemas import (
    LIFECYCLE_EVENT_VERSION,
    EventType,
    InvocationError,
    LifecycleEvent,
    Tier,
    utcnow,
)
from soulbox.core.secrets_store import SecretStore
from soulbox.core.settings import Settings
from soulbox.core.store import publish_event, settle

from ..instruments import StartKind, WorkerInstruments
from ..linux.box import Box, BoxLimits
from ..linux.envd.main import VERSION as ENVD_VERSION
from ..linux.linelog import LogLine
from ..linux.netpolicy import EgressPolicy
from ..linux.sandbox import Launcher
from .envd import EnvdClient
from .templates import HOME, Template, Templates

log = get_logger(__name__)

MIB = 1024 * 1024
METRICS_INTERVAL_S = 1.0
METRICS_KEPT = 3600  # one hour of samples


@dataclass(eq=False)
class Hosted:
    box: Box
    record: SandboxRecord
    envd: EnvdClient
    deadline: asyncio.TimerHandle | None = None
    samples: deque[SandboxMetric] = field(default_factory=lambda: deque(maxlen=METRICS_KEPT))
    last_cpu: tuple[float, int] | None = None  # (monotonic time, cpu ns) of the last sample
    # The billed running period: since creation or the last resume, up to a pause or the end.
    period_started: float = field(default_factory=time.monotonic)
    period_cpu_ns: int = 0
    period_tx: int = 0  # bytes the sandbox had sent when the period started (billed as egress)
    events: int = 0  # lifecycle events published, numbering their ids
    log_out: SandboxLogPublisher | None = None  # its log on SB_LOGS, kept after it ends


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
        self._launcher = launcher
        self._templates = templates
        self._hosted: dict[str, Hosted] = {}
        self._pool: dict[str, list[Box]] = {}
        self._starting = 0
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._instruments = instruments
        if instruments is not None:
            instruments.watch_sandboxes(lambda: self.in_use, lambda: sum(len(p) for p in self._pool.values()))

    @property
    def count(self) -> int:
        """Sandboxes held now: handed out, pooled and being started."""
        return len(self._hosted) + sum(len(p) for p in self._pool.values()) + self._starting

    @property
    def in_use(self) -> int:
        return len(self._hosted)

    def get(self, sandbox_id: str) -> Hosted | None:
        return self._hosted.get(sandbox_id)

    async def start(self) -> None:
        for action, cb in (("create", self._on_create), ("control", self._on_control)):
            self._subs.append(await self._nc.subscribe(names.worker_sandbox_subject(self.worker_id, action), cb=cb))
        self._spawn(self._sample_forever())
        if self.settings.pool_size:
            self._spawn(self._fill("base"))

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
        for pool in self._pool.values():
            for box in pool:
                await box.close()
        self._pool.clear()

    # Requests --------------------------------------------------------------------------------

    async def _on_create(self, msg: Msg) -> None:
        try:
            record = await self.create(decode(SandboxCreate, msg.data))
            reply = SandboxReply(record=record)
        except SoulboxError as exc:
            reply = SandboxReply(error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            log.exception("sandbox.create_failed")
            reply = SandboxReply(error_code="sandbox_error", error_message=f"the sandbox could not start: {exc}")
        await msg.respond(encode(reply.model_copy(update={"sandboxes": self.in_use})))

    async def _on_control(self, msg: Msg) -> None:
        try:
            reply = await self.control(decode(SandboxControl, msg.data))
        except SoulboxError as exc:
            reply = SandboxReply(error_code=exc.code, error_message=exc.message)
        await msg.respond(encode(reply))

    async def create(self, request: SandboxCreate) -> SandboxRecord:
        if self._closed:
            raise Overloaded("this worker is stopping")
        if request.sandbox_id in self._hosted:
            return self._hosted[request.sandbox_id].record  # a retried create: the same sandbox
        env = dict(request.env_vars)
        if request.secrets:  # opened here, before a box is taken: a missing secret costs nothing
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
        template = await self._templates.get(request.template)
        egress = _egress(request)
        # Warm boxes have no network; one with egress starts in a namespace of the launcher's pool.
        pool = self._pool.get(template.name, []) if egress is None else []
        box = pool.pop() if pool else None
        kind: StartKind = "warm"
        if box is None:
            if self.count >= self.settings.capacity:
                raise Overloaded(f"worker {self.worker_id} hosts {self.settings.capacity} sandboxes already")
            box = await self._start_box(template, egress)
            kind = "cold"
        envd = EnvdClient(box.socket)
        token = secrets.token_urlsafe(24)
        try:
            await envd.init(env, token)
        except BaseException:
            await envd.aclose()
            await box.close()
            raise
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
            access_token=token,
            traffic_token=secrets.token_urlsafe(24),
            network=request.network if egress is not None else None,
        )
        hosted = Hosted(box, record, envd, period_cpu_ns=_cpu_ns(box))
        self._hosted[request.sandbox_id] = hosted
        hosted.log_out = self._publish_log(box, request.tenant, request.sandbox_id)
        self._arm(hosted, request.timeout_s)
        await self._save(record)
        await self._event(hosted, EventType.SANDBOX_CREATED)
        self._spawn(self._watch(request.sandbox_id, box))
        if self.settings.pool_size:
            self._spawn(self._fill(template.name))
        if self._instruments is not None:
            self._instruments.handed_out(template.name, kind)
        log.info("sandbox.created", sandbox=request.sandbox_id, template=template.name, tenant=request.tenant)
        return record

    async def control(self, request: SandboxControl) -> SandboxReply:
        hosted = self._hosted.get(request.sandbox_id)
        if hosted is None:
            raise NotFound(f"sandbox {request.sandbox_id!r} is not running", code="sandbox_not_found")
        record = hosted.record
        if request.op == "kill":
            await self._end(request.sandbox_id, "killed")
            return SandboxReply(record=record)
        if request.op == "metrics":
            return SandboxReply(record=record, metrics=[*hosted.samples, self._sample(hosted)])
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
            hosted.period_started, hosted.period_cpu_ns = time.monotonic(), _cpu_ns(hosted.box)
            hosted.period_tx = hosted.box.net_counters()[1]
            await self._event(hosted, EventType.SANDBOX_RESUMED)
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

    async def _start_box(self, template: Template, egress: EgressPolicy | None = None) -> Box:
        self._starting += 1
        started = time.monotonic()
        try:
            limits = BoxLimits(
                memory_bytes=self.settings.memory_mb * MIB,
                cpu_quota=float(self.settings.cpu_count),
                pids_max=self.settings.pids_max,
                disk_bytes=self.settings.disk_mb * MIB,
            )
            box = await self._launcher.start(
                secrets.token_hex(8),
                template.command,
                limits=limits,
                env=template.env,
                ro_binds=template.ro_binds,
                home=HOME,
                ready=template.ready,
                ready_timeout=self.settings.ready_timeout_s,
                egress=egress,
            )
        finally:
            self._starting -= 1
        if self._instruments is not None:
            self._instruments.started_box(template.name, time.monotonic() - started)
        return box

    async def _fill(self, name: str) -> None:
        """Top the template's pool up to ``pool_size`` within the capacity."""
        template = await self._templates.get(name)
        pool = self._pool.setdefault(name, [])
        while not self._closed and len(pool) < self.settings.pool_size and self.count < self.settings.capacity:
            try:
                pool.append(await self._start_box(template))
            except SoulboxError as exc:
                log.warning("sandbox.pool_start_failed", template=name, error=exc.message)
                return

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
        await self._event(hosted, EventType.SANDBOX_PAUSED, billed=True)
        log.info("sandbox.paused", sandbox=hosted.record.sandbox_id)

    async def _watch(self, sandbox_id: str, box: Box) -> None:
        await box.ended()
        hosted = self._hosted.get(sandbox_id)
        if hosted is not None and hosted.box is box:
            await self._end(sandbox_id, "exited")

    async def _end(self, sandbox_id: str, reason: str) -> None:
        hosted = self._hosted.pop(sandbox_id, None)
        if hosted is None:
            return
        if hosted.deadline is not None:
            hosted.deadline.cancel()
        running = hosted.record.state == SandboxState.RUNNING
        try:
            await self._event(hosted, EventType.SANDBOX_KILLED, billed=running, reason=reason)
        except Exception as exc:  # NATS away: the sandbox still ends (the event is lost, logged)
            log.warning("sandbox.event_not_published", sandbox=sandbox_id, error=repr(exc))
        if hosted.log_out is not None:
            hosted.box.log.sink = None
            await hosted.log_out.close()
        await hosted.envd.aclose()
        await hosted.box.close()
        with contextlib.suppress(Exception):  # NATS away: the record dies with this worker's liveness
            await self._kv.delete(sandbox_id)
        log.info("sandbox.ended", sandbox=sandbox_id, reason=reason)

    def _publish_log(self, box: Box, tenant: str, sandbox_id: str) -> SandboxLogPublisher:
        """From now on the box's log goes to SB_LOGS too, starting with what it printed in the pool."""
        out = SandboxLogPublisher(self._js, tenant=tenant, sandbox_id=sandbox_id)

        def publish(line: LogLine) -> None:
            out.write(SandboxLogLine(at=line.at, level=line.level, message=line.text))

        for line in box.log.lines():
            publish(line)
        box.log.sink = publish
        return out

    async def _event(
        self, hosted: Hosted, type_: EventType, *, billed: bool = False, reason: str | None = None
    ) -> None:
        """Publish a lifecycle event and wait until it is stored; billed ones close the running period."""
        record = hosted.record
        seconds = cpu_ms = egress_bytes = None
        if billed:
            seconds = round(time.monotonic() - hosted.period_started, 3)
            cpu_ms = max(0, _cpu_ns(hosted.box) - hosted.period_cpu_ns) / 1e6
            if hosted.box.net is not None:
                egress_bytes = max(0, hosted.box.net_counters()[1] - hosted.period_tx)
        event = LifecycleEvent(
            v=LIFECYCLE_EVENT_VERSION,
            id=f"{record.sandbox_id}.{type_.value.removeprefix('sandbox.')}.{hosted.events}",
            type=type_,
            tenant=record.tenant,
            function=record.template,
            tier=Tier.LINUX,
            sandbox_id=record.sandbox_id,
            memory_limit_mb=record.memory_mb,
            seconds=seconds,
            cpu_ms=cpu_ms,
            egress_bytes=egress_bytes,
            error=InvocationError(kind="ended", message=reason) if reason and reason != "killed" else None,
        )
        hosted.events += 1
        hosted.box.log.note(f"{type_.value}" + (f" ({reason})" if reason else ""))
        await settle([await publish_event(self._js, event)])

    async def _update(self, hosted: Hosted, **changes: object) -> None:
        hosted.record = hosted.record.model_copy(update=changes)
        await self._save(hosted.record)

    async def _save(self, record: SandboxRecord) -> None:
        await self._kv.put(record.sandbox_id, encode(record))

    # Metrics ---------------------------------------------------------------------------------

    def _sample(self, hosted: Hosted) -> SandboxMetric:
        usage = hosted.box.usage()
        now = time.monotonic()
        pct = 0.0
        if usage.cpu_ns is not None:
            if hosted.last_cpu is not None and now > hosted.last_cpu[0]:
                used_s = (usage.cpu_ns - hosted.last_cpu[1]) / 1e9
                pct = max(0.0, 100.0 * used_s / (now - hosted.last_cpu[0]) / hosted.record.cpu_count)
            hosted.last_cpu = (now, usage.cpu_ns)
        disk_total = hosted.record.disk_mb * MIB
        rx, tx = hosted.box.net_counters()
        return SandboxMetric(
            cpu_count=hosted.record.cpu_count,
            cpu_used_pct=round(pct, 2),
            mem_used=usage.memory_bytes,
            mem_total=hosted.record.memory_mb * MIB,
            disk_used=hosted.box.disk_used(HOME),
            disk_total=disk_total,
            net_rx_bytes=rx,
            net_tx_bytes=tx,
            disk_read_bytes=usage.io_read_bytes or 0,
            disk_write_bytes=usage.io_write_bytes or 0,
        )

    async def _sample_forever(self) -> None:
        """Every second: a sample per running sandbox, kept for the metrics API and published as one batch."""
        subject = names.sandbox_metrics_subject(self.worker_id)
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            batch = []
            for hosted in list(self._hosted.values()):
                if hosted.record.state == SandboxState.RUNNING and hosted.box.alive:
                    try:
                        sample = self._sample(hosted)
                    except OSError:  # ended meanwhile
                        continue
                    hosted.samples.append(sample)
                    record = hosted.record
                    batch.append(
                        SandboxUsage(
                            sandbox_id=record.sandbox_id, tenant=record.tenant, template=record.template, metric=sample
                        )
                    )
            with contextlib.suppress(Exception):  # telemetry: a tick lost to a reconnect is not worth more
                await self._nc.publish(subject, encode(SandboxMetricsBatch(worker_id=self.worker_id, sandboxes=batch)))

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


def _cpu_ns(box: Box) -> int:
    try:
        return box.usage().cpu_ns or 0
    except OSError:  # the cgroup is gone with the box
        return 0
