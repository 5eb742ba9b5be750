"""The worker process: runs dispatched invocations on its runtime tiers.

It announces itself with heartbeats (core NATS for liveness, the workers
bucket for the record), takes dispatches
on its own core NATS subject (request/reply with the scheduler), writes the
invocation record, publishes lifecycle events, answers the waiting gateway
directly, and replies to the scheduler only once the record and events are
durable — so a worker killed mid-invocation leaves the dispatch unanswered
and the scheduler redelivers it elsewhere.

Run: ``python -m soulbox.runtimes.worker``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from soulbox.core import names, tracing
from soulbox.core.bus import Buckets, connect, ensure_topology
from soulbox.core.codec import decode, encode
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.metrics_server import MetricsServer
from soulbox.core.outputlog import OutputPublisher
from soulbox.core.process import run_service
from soulbox.core.schemas import (
    Dispatch,
    DispatchReply,
    EventType,
    FunctionSpec,
    InvocationRecord,
    InvocationRequest,
    LifecycleEvent,
    Status,
    Tier,
    WorkerHeartbeat,
    utcnow,
)
from soulbox.core.secrets import MasterKeys, SecretsError
from soulbox.core.secrets_store import SecretStore
from soulbox.core.settings import Settings
from soulbox.core.store import publish_event, put_nowait, settle
from soulbox.core.tunnel import TunnelServer

from .artifacts import Artifacts
from .instruments import WorkerInstruments
from .js.factory import create_js_runtimes
from .linux.errors import SandboxUnavailable
from .linux.runtime import LinuxRuntime, create_linux_runtime
from .outcomes import finish, platform_failure, trace_outcome
from .protocol import OutputSink, RunResult, Runtime, StreamingRuntime
from .sandboxes.dataplane import SandboxDataPlane
from .sandboxes.host import SandboxHost
from .sandboxes.templates import Templates
from .wasm.runtime import WasmRuntime

log = get_logger(__name__)

RUNNING_RECORD_AFTER_S = 0.05


class Worker:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        buckets: Buckets,
        runtimes: dict[Tier, Runtime],
        sandboxes: SandboxHost | None = None,
        instruments: WorkerInstruments | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self.settings = settings
        self._secrets = secrets
        self.id = settings.worker.id
        self.capacity = settings.worker.capacity
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._buckets = buckets
        self._runtimes = runtimes
        # Checked once: isinstance() against a runtime-checkable Protocol is slow on a hot path.
        self._streaming = {tier: rt for tier, rt in runtimes.items() if isinstance(rt, StreamingRuntime)}
        self._sandboxes = sandboxes
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._started_at = utcnow()
        self._stopping = asyncio.Event()
        self.instruments = instruments if instruments is not None else WorkerInstruments()
        self.instruments.watch_in_flight(lambda: self._in_flight)

    async def serve(self) -> None:
        sub = await self._nc.subscribe(names.worker_run_subject(self.id), cb=self._on_dispatch)
        await self._heartbeat()
        log.info("worker.ready", worker=self.id, capacity=self.capacity, tiers=list(self._runtimes))
        beat = asyncio.create_task(self._heartbeats())
        await self._stopping.wait()
        # Drain: refuse new work, finish what runs, then leave.
        await sub.unsubscribe()
        await self._heartbeat(draining=True)
        await self._buckets.workers.delete(self.id)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.functions.max_timeout_ms / 1000)
        beat.cancel()

    def stop(self) -> None:
        self._stopping.set()

    async def _heartbeat(self, *, draining: bool = False) -> None:
        beat = encode(
            WorkerHeartbeat(
                worker_id=self.id,
                tiers=list(self._runtimes),
                capacity=self.capacity,
                in_flight=self._in_flight,
                pid=os.getpid(),
                host=socket.gethostname(),
                started_at=self._started_at,
                draining=draining,
                sandbox_capacity=0 if draining or self._sandboxes is None else self.settings.sandboxes.capacity,
                sandboxes=self._sandboxes.in_use if self._sandboxes is not None else 0,
            )
        )
        # Liveness goes over core NATS; the bucket keeps the latest for new schedulers and `status`.
        await self._nc.publish(names.WORKER_HEARTBEAT_SUBJECT, beat)
        await asyncio.wait_for(self._buckets.workers.put(self.id, beat), self.settings.worker.heartbeat_ttl_s)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.worker.heartbeat_interval_s)
            try:
                await self._heartbeat()
            except Exception as exc:  # NATS down: keep trying, the scheduler will see us stale
                log.warning("worker.heartbeat_failed", error=str(exc))

    async def _on_dispatch(self, msg: Msg) -> None:
        try:
            dispatch = decode(Dispatch, msg.data)
        except SchemaError as exc:
            log.warning("worker.bad_dispatch", error=exc.message)
            await msg.respond(encode(DispatchReply(accepted=False, reason=exc.message)))
            return
        if self._in_flight >= self.capacity or dispatch.tier not in self._runtimes or self._stopping.is_set():
            await msg.respond(encode(DispatchReply(accepted=False, reason="busy", in_flight=self._in_flight)))
            return
        self._in_flight += 1
        task = asyncio.create_task(self._execute(dispatch, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, dispatch: Dispatch, msg: Msg) -> None:
        request = dispatch.request
        spec = request.function
        bound = structlog.contextvars.bound_contextvars(
            invocation_id=request.id, function=spec.name, tenant=request.tenant, trace_id=request.trace_id
        )
        traced = tracing.span(f"invoke {spec.name}", kind=tracing.SpanKind.SERVER, parent=tracing.extract(msg.headers))
        with bound, traced as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "soulbox.invocation_id": request.id,
                        "soulbox.function": spec.name,
                        "soulbox.tenant": request.tenant,
                        "soulbox.tier": dispatch.tier.value,
                        "soulbox.runtime": spec.runtime.value,
                        "soulbox.attempt": dispatch.attempt,
                        "soulbox.worker": self.id,
                    }
                )
            output: OutputPublisher | None = None
            try:
                record = InvocationRecord(
                    id=request.id,
                    tenant=request.tenant,
                    function=spec.name,
                    status=Status.RUNNING,
                    tier=dispatch.tier,
                    worker=self.id,
                    attempt=dispatch.attempt,
                    accepted_at=request.accepted_at,
                    scheduled_at=dispatch.scheduled_at,
                    started_at=utcnow(),
                    timeout_ms=spec.limits.timeout_ms,
                    trace_id=request.trace_id,
                )
                # The guest starts first, with the event loop left alone while it runs. A run
                # that outlasts RUNNING_RECORD_AFTER_S is announced then (its "started" event and
                # "running" record); a short one sends its "started" event (stamped with the real
                # start) together with its terminal event and goes straight to its final record.
                output = self._output_publisher(dispatch)
                run = asyncio.ensure_future(self._run(dispatch, output))
                log.info("invocation.started", attempt=dispatch.attempt)
                pending: list[asyncio.Future[PubAck]] = []
                done, _ = await asyncio.wait({run}, timeout=RUNNING_RECORD_AFTER_S)
                if not done:
                    pending.append(await self._event(EventType.STARTED, record, spec.limits.memory_mb))
                    pending.append(await self._put_record(record))
                final, event_type = finish(record, await run)
                if done:
                    pending.append(await self._event(EventType.STARTED, record, spec.limits.memory_mb))
                if not dispatch.final and final.status in (Status.FAILED, Status.TIMED_OUT):
                    # The scheduler tries again: this attempt's end is not the invocation's.
                    final = final.model_copy(update={"status": Status.RETRYING})
                    event_type = EventType.RETRYING
                await output.finish(final)  # the output's end precedes the record and the caller's reply
                # The event before the record: a finished record without its event is
                # repaired by the scheduler, but the other way round would be invisible.
                pending.append(await self._event(event_type, final, spec.limits.memory_mb))
                pending.append(await self._put_record(final))
                await asyncio.gather(settle(pending), output.confirmed())  # the output is stored by the reply
                self.instruments.finished(dispatch.tier, final.outcome, final.duration_ms)
                if span.is_recording():
                    trace_outcome(span, final)
                # Only now the caller: whoever gets the result can read the record at once.
                if request.reply_to:
                    await self._nc.publish(request.reply_to, encode(final))
                await msg.respond(
                    encode(DispatchReply(accepted=True, status=final.status, in_flight=self._in_flight - 1))
                )
                log.info(
                    "invocation.finished",
                    status=final.status.value,
                    outcome=final.outcome.value if final.outcome else None,
                    duration_ms=round(final.duration_ms or 0, 3),
                )
            except Exception as exc:
                # The record or events could not be made durable: no reply, so the
                # scheduler sees the dispatch unanswered and retries it.
                log.warning("invocation.unconfirmed", error=repr(exc))
                span.record_exception(exc)
                tracing.fail("the record or events could not be made durable")
            finally:
                self._in_flight -= 1
                if output is not None:
                    await output.close()

    def _output_publisher(self, dispatch: Dispatch) -> OutputPublisher:
        return OutputPublisher(
            self._js,
            tenant=dispatch.request.tenant,
            invocation_id=dispatch.request.id,
            attempt=dispatch.attempt,
            flush_s=self.settings.logs.flush_ms / 1000,
            chunk_bytes=self.settings.logs.chunk_bytes,
        )

    async def _run(self, dispatch: Dispatch, output: OutputSink) -> RunResult:
        spec, input = dispatch.request.function, dispatch.request.input
        try:
            spec = await self._with_secrets(dispatch.request)
            runtime = self._runtimes[dispatch.tier]
            streaming = self._streaming.get(dispatch.tier)
            if streaming is not None:
                return await streaming.run_streaming(spec, input, output)
            result = await runtime.run(spec, input)
            output.write("stdout", result.stdout)  # this tier has its output only at the end
            output.write("stderr", result.stderr)
            return result
        except Exception as exc:  # SoulBox failed, not the guest
            log.exception("invocation.platform_error")
            return platform_failure(exc)

    async def _with_secrets(self, request: InvocationRequest) -> FunctionSpec:
        """The spec to run: its secrets opened into its env, in this process only (never logged or sent)."""
        spec = request.function
        if not spec.secrets:
            return spec
        if self._secrets is None:
            raise SecretsError("this worker has no secrets store")
        values = await self._secrets.reveal(
            self._js,
            request.tenant,
            spec.secrets,
            actor=f"function:{spec.name}",
            source=f"worker:{self.id}",
            detail={"function": spec.name, "invocation_id": request.id},
        )
        return spec.model_copy(update={"env": {**spec.env, **values}})

    async def _put_record(self, record: InvocationRecord) -> asyncio.Future[PubAck]:
        return await put_nowait(self._js, names.INVOCATIONS_BUCKET, record.id, record)

    async def _event(self, type_: EventType, record: InvocationRecord, memory_mb: int) -> asyncio.Future[PubAck]:
        event = LifecycleEvent.for_record(type_, record, memory_limit_mb=memory_mb)
        return await publish_event(self._js, event)


async def run(settings: Settings) -> None:
    structlog.contextvars.bind_contextvars(worker=settings.worker.id)
    master_keys = MasterKeys.from_settings(settings)
    nc = await connect(settings, name=f"soulbox-worker-{settings.worker.id}")
    buckets = await ensure_topology(nc.jetstream(), settings)
    secrets = SecretStore(buckets.secrets, master_keys)

    artifacts = Artifacts(buckets.artifacts)
    wasm = WasmRuntime(
        artifacts.fetch,
        cache_dir=settings.data_dir / "cache" / "wasm",
        concurrency=settings.worker.capacity,
        module_cache_size=settings.worker.module_cache_size,
        tick_ms=settings.worker.epoch_tick_ms,
        shared=artifacts,
        read_roots=settings.wasm.read_roots,
        warm_cpython=settings.wasm.warm_up_cpython,
    )
    warm_up = asyncio.create_task(wasm.warm_up())  # interpreters compile while the worker serves
    runtimes: dict[Tier, Runtime] = {Tier.WASM: wasm, **create_js_runtimes(settings, artifacts.fetch)}
    try:
        runtimes[Tier.LINUX] = create_linux_runtime(settings, artifacts.fetch, settings.linux)
    except SandboxUnavailable as exc:  # no bwrap, user namespaces or cgroups here: run without the tier
        log.warning("worker.tier_unavailable", tier=Tier.LINUX.value, reason=exc.message)
    instruments = WorkerInstruments()
    sandboxes: SandboxHost | None = None
    tunnel: TunnelServer | None = None
    linux = runtimes.get(Tier.LINUX)
    if isinstance(linux, LinuxRuntime) and settings.sandboxes.capacity:
        sandboxes = SandboxHost(
            settings,
            nc,
            buckets.sandboxes,
            linux.launcher,
            Templates(settings, linux.launcher.guest_dir()),
            instruments=instruments,
            secrets=secrets,
        )
        await sandboxes.start()
        tunnel = TunnelServer(nc, names.worker_tunnel_subject(settings.worker.id), SandboxDataPlane(sandboxes).handle)
        await tunnel.start()
    worker = Worker(settings, nc, buckets, runtimes, sandboxes, instruments, secrets)
    metrics: MetricsServer | None = None
    if settings.worker.metrics_port:
        metrics = MetricsServer(
            instruments.registry, host=settings.worker.metrics_host, port=settings.worker.metrics_port
        )
        await metrics.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.serve()
    finally:
        warm_up.cancel()
        if metrics is not None:
            await metrics.close()
        if tunnel is not None:
            await tunnel.close()
        if sandboxes is not None:
            await sandboxes.close()
        for runtime in runtimes.values():
            await runtime.close()
        await nc.drain()


def main() -> None:
    run_service("worker", run)


if __name__ == "__main__":
    main()
