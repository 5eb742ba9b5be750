"""The scheduler: pulls accepted invocations and dispatches them to workers.

For each invocation: choose the tier, pick a live worker with free capacity,
record ``scheduled``, and send the dispatch as a request to that worker. The
JetStream message is acked only when the worker answers that the invocation
finished (its record and events are durable by then). If the worker dies —
its heartbeat stops or its key is deleted — or does not answer, the
invocation is dispatched again elsewhere; if this scheduler dies, JetStream
redelivers the unacked message to another scheduler, which first checks the
record so a finished invocation is never run twice.

A failed asynchronous attempt is retried after a backoff (the message is
nak'ed with a delay, see ``retries``), a last failure is dead-lettered, a
function's concurrency limit is held by leases in KV (``concurrency``), and a
finished invocation with a callback URL gets its callback queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from soulbox.core import names, tracing
from soulbox.core.bus import Buckets
from soulbox.core.codec import decode, encode
from soulbox.core.errors import SchemaError, SoulboxError
from soulbox.core.fetch import BatchFetcher
from soulbox.core.inbox import Inbox
from soulbox.core.logging import get_logger
from soulbox.core.schemas import (
    Dispatch,
    DispatchReply,
    EventType,
    InvocationError,
    InvocationRecord,
    InvocationRequest,
    LifecycleEvent,
    Outcome,
    Status,
    Tier,
    utcnow,
)
from soulbox.core.settings import Settings
from soulbox.core.store import get_model, publish_event, put_nowait, settle

from . import retries
from .callbacks import queue_callback
from .capacity import CapacityQueue
from .concurrency import ConcurrencyGate
from .directory import WorkerDirectory
from .instruments import SchedulerInstruments
from .placement import choose_tier, pick_worker

log = get_logger(__name__)

MAX_PLATFORM_ATTEMPTS = 5
TERMINAL_EVENTS = {
    Status.COMPLETED: EventType.COMPLETED,
    Status.FAILED: EventType.FAILED,
    Status.TIMED_OUT: EventType.TIMED_OUT,
}
FETCH_TIMEOUT_S = 1.0  # how long one pull request stays open (and so how soon a stop is noticed)
PROGRESS_INTERVAL_S = 5.0  # well under the consumer's ack_wait
CAPACITY_RECHECK_S = 0.5  # a waiter for a full tier looks again at least this often


class Scheduler:
    def __init__(
        self, settings: Settings, nc: NATS, buckets: Buckets, directory: WorkerDirectory, inbox: Inbox
    ) -> None:
        self.settings = settings
        self._nc = nc
        self._inbox = inbox
        self._js: JetStreamContext = nc.jetstream()
        self._buckets = buckets
        self._directory = directory
        self._dispatched: Counter[str] = Counter()
        self._slots = asyncio.Semaphore(settings.scheduler.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._announced: dict[str, asyncio.Future[PubAck]] = {}  # acks of `scheduled` events, by invocation
        self._stopping = asyncio.Event()
        self._gate = ConcurrencyGate(buckets.concurrency, grace_s=settings.scheduler.dispatch_grace_s)
        self._capacity = CapacityQueue()
        directory.on_change(self._capacity.wake_one)
        self.instruments = SchedulerInstruments(lambda: len(directory.live()))

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        fetcher = BatchFetcher(self._nc, stream=names.INVOCATIONS_STREAM, durable=names.SCHEDULER_CONSUMER)
        await fetcher.start()
        log.info("scheduler.ready")
        batch = self.settings.scheduler.fetch_batch
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()  # back-pressure: never hold more than max_in_flight
                self._slots.release()
                # One pull request stays open and hands over each invocation the moment it is
                # stored; what gathered meanwhile comes in one batch (see core/fetch.py).
                try:
                    msgs = await fetcher.fetch(batch, timeout=FETCH_TIMEOUT_S)
                except Exception as exc:  # NATS reconnecting: try again shortly
                    log.warning("scheduler.fetch_failed", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                log.debug("scheduler.fetched", count=len(msgs))
                for msg in msgs:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._handle(msg, fetched=asyncio.get_running_loop().time()))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
        finally:
            # What is fetched and not yet handled goes back at once (to another scheduler);
            # unfinished dispatches stay unacked: JetStream redelivers them after the ack wait.
            with contextlib.suppress(Exception):
                await fetcher.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler.handler_crashed", error=repr(task.exception()))

    async def _handle(self, msg: Msg, *, fetched: float) -> None:
        try:
            request = decode(InvocationRequest, msg.data)
        except SchemaError as exc:
            log.error("scheduler.bad_invocation", error=exc.message)
            await msg.term()
            return
        delivered = msg.metadata.num_delivered or 1
        bound = structlog.contextvars.bound_contextvars(
            invocation_id=request.id, function=request.function.name, tenant=request.tenant, trace_id=request.trace_id
        )
        parent = tracing.extract(msg.headers)
        with bound, tracing.span(f"process {msg.subject}", kind=tracing.SpanKind.CONSUMER, parent=parent) as span:
            if span.is_recording():
                span.set_attributes(_span_attributes(request, msg, delivered))
            attempt = delivered
            if delivered > 1:
                existing = await get_model(self._buckets.invocations, request.id, InvocationRecord)
                if existing is not None and existing.status.terminal:
                    log.info("scheduler.already_finished", status=existing.status.value)
                    await self._confirm_finished(request, existing, msg)
                    return
                if existing is not None and existing.status is Status.RETRYING:
                    attempt = max(delivered, existing.attempt + 1)
            try:
                await self._schedule(request, msg, attempt=attempt, fetched=fetched)
            except SoulboxError as exc:
                await self._fail(request, msg, attempt=attempt, message=exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS trouble mid-dispatch: hand it back for a retry soon
                log.warning("scheduler.retry_later", error=repr(exc))
                with contextlib.suppress(Exception):
                    await msg.nak(delay=0.5)
            finally:
                unsettled = self._announced.pop(request.id, None)
                if unsettled is not None and not unsettled.done():
                    unsettled.cancel()  # the event was sent; only its ack is no longer awaited

    async def _schedule(self, request: InvocationRequest, msg: Msg, *, attempt: int, fetched: float) -> None:
        leased = await self._gate.hold(request, msg)
        try:
            await self._place(request, msg, attempt=attempt, fetched=fetched)
        finally:
            if leased:
                await asyncio.shield(self._gate.release(request))

    async def _place(self, request: InvocationRequest, msg: Msg, *, attempt: int, fetched: float) -> None:
        tiers = {tier for worker in self._directory.live() for tier in worker.tiers}
        tier = choose_tier(request.function, tiers)
        excluded: set[str] = set()
        announced = False
        while True:
            worker = await self._await_worker(tier, frozenset(excluded), msg)
            if worker is None:
                # Nobody can take it: leave it queued for later (or for another scheduler).
                log.warning("scheduler.no_worker", tier=tier.value)
                self.instruments.dispatched(tier, "no_worker")
                await msg.nak(delay=1.0)
                return
            dispatch = Dispatch(request=request, tier=tier, attempt=attempt, final=retries.is_final(request, attempt))
            reply = await self._dispatch(worker, dispatch, msg, announce=not announced)
            announced = True
            self.instruments.dispatched(tier, "lost" if reply is None else "accepted" if reply.accepted else "refused")
            if reply is not None and reply.accepted:
                self.instruments.answered(tier, asyncio.get_running_loop().time() - fetched)
                await self._settle_announcement(request.id)
                await self._after(request, msg, attempt, reply.status)
                return
            excluded.add(worker)
            if reply is None:  # worker lost mid-invocation, or its answer was: run it again elsewhere
                existing = await get_model(self._buckets.invocations, request.id, InvocationRecord)
                if existing is not None and existing.status.terminal:
                    await self._confirm_finished(request, existing, msg)
                    return
                attempt += 1
                if attempt > MAX_PLATFORM_ATTEMPTS:
                    await self._fail(request, msg, attempt=attempt, message="workers kept failing")
                    return
                log.warning("scheduler.redispatch", lost_worker=worker, attempt=attempt)
            if len(excluded) >= len(self._directory.live()):
                excluded.clear()
                await asyncio.sleep(0.05)

    async def _after(self, request: InvocationRequest, msg: Msg, attempt: int, status: Status | None) -> None:
        """An attempt ended: retry it later, dead-letter it, or be done with it."""
        if status is Status.RETRYING:
            delay = retries.backoff_s(request, attempt)
            log.info("scheduler.retry", attempt=attempt, delay_s=round(delay, 3))
            await msg.nak(delay=delay)  # JetStream redelivers it after the backoff, to any scheduler
            return
        if status in (Status.FAILED, Status.TIMED_OUT) and request.reply_to is None:
            record = await get_model(self._buckets.invocations, request.id, InvocationRecord)
            await retries.dead_letter(self._js, request, record, attempt=attempt)
        await queue_callback(self._js, request)
        await msg.ack()

    async def _await_worker(self, tier: Tier, excluded: frozenset[str], msg: Msg) -> str | None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.scheduler.no_worker_wait_s
        last_progress = loop.time()
        woken = False
        while True:
            chosen = pick_worker(self._directory.live(), tier, self._dispatched, exclude=excluded)
            if chosen is not None:
                if self._capacity:
                    self._capacity.wake_one()  # there may be room for the next one too
                return chosen.worker_id
            now = loop.time()
            if now > give_up or self._stopping.is_set():
                return None
            if now - last_progress > PROGRESS_INTERVAL_S:
                await msg.in_progress()
                last_progress = now
            await self._capacity.wait(CAPACITY_RECHECK_S, front=woken)
            woken = True

    async def _announce(self, request: InvocationRequest, dispatch: Dispatch, worker: str) -> None:
        """The ``scheduled`` event (the worker writes the record next, so none is written here)."""
        event = LifecycleEvent(
            id=f"{request.id}.scheduled.{dispatch.attempt}",
            type=EventType.SCHEDULED,
            invocation_id=request.id,
            tenant=request.tenant,
            function=request.function.name,
            tier=dispatch.tier,
            worker=worker,
            attempt=dispatch.attempt,
            at=dispatch.scheduled_at,
        )
        ack = await publish_event(self._js, event)
        self._announced[request.id] = ack

    async def _confirm_finished(self, request: InvocationRequest, record: InvocationRecord, msg: Msg) -> None:
        """A finished record whose worker never confirmed: make sure its terminal event exists, then ack.

        The worker may have died (or lost NATS) between writing the record and
        its event; the event is published again under its own id, so if it was
        stored already the stream drops the copy and billing counts it once.
        """
        event = LifecycleEvent.for_record(
            TERMINAL_EVENTS[record.status], record, memory_limit_mb=request.function.limits.memory_mb
        )
        await settle([await publish_event(self._js, event)])
        if record.status in (Status.FAILED, Status.TIMED_OUT) and request.reply_to is None:
            await retries.dead_letter(self._js, request, record, attempt=record.attempt)
        await queue_callback(self._js, request)
        await msg.ack()

    async def _settle_announcement(self, invocation_id: str) -> None:
        ack = self._announced.pop(invocation_id, None)
        if ack is not None:
            await settle([ack])

    async def _dispatch(self, worker: str, dispatch: Dispatch, msg: Msg, *, announce: bool) -> DispatchReply | None:
        """Send, announce (once per invocation), and wait. None: the worker died or never answered."""
        with tracing.span(f"dispatch {dispatch.tier.value}", kind=tracing.SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({"soulbox.worker": worker, "soulbox.attempt": dispatch.attempt})
            answer = await self._send(worker, dispatch, msg, announce=announce)
            if span.is_recording():
                result = "lost" if answer is None else "accepted" if answer.accepted else "refused"
                span.set_attribute("soulbox.dispatch", result)
            return answer

    async def _send(self, worker: str, dispatch: Dispatch, msg: Msg, *, announce: bool) -> DispatchReply | None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + dispatch.request.function.limits.timeout_ms / 1000
        give_up += self.settings.scheduler.dispatch_grace_s
        token = f"{dispatch.request.id}-{dispatch.attempt}"
        reply = self._inbox.expect(token)
        death = self._directory.death(worker)
        waiting: set[asyncio.Future[Any]] = {reply, death}
        self._dispatched[worker] += 1
        try:
            await self._nc.publish(
                names.worker_run_subject(worker),
                encode(dispatch),
                reply=self._inbox.subject(token),
                headers=tracing.inject(),
            )
            # Let nats-py's flusher put the dispatch on the wire before the event is built.
            await asyncio.sleep(0)
            if announce:
                await self._announce(dispatch.request, dispatch, worker)
            while True:
                wait = min(PROGRESS_INTERVAL_S, give_up - loop.time())
                if wait <= 0:
                    return None
                done, _ = await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if reply in done:
                    try:
                        answer = decode(DispatchReply, reply.result().data)
                    except SchemaError as exc:
                        log.error("scheduler.bad_reply", worker=worker, error=exc.message)
                        return None
                    if answer.in_flight is not None:
                        self._directory.report_load(worker, answer.in_flight)
                    return answer
                if death in done:
                    return None
                await msg.in_progress()
        finally:
            self._inbox.discard(token)
            self._directory.forget(worker, death)
            self._dispatched[worker] -= 1
            if self._dispatched[worker] <= 0:
                del self._dispatched[worker]
            self._capacity.wake_one()  # this scheduler's own count of the worker's load went down

    async def _fail(self, request: InvocationRequest, msg: Msg, *, attempt: int, message: str) -> None:
        log.error("scheduler.invocation_failed", error=message)
        tracing.fail(message)
        record = InvocationRecord(
            id=request.id,
            tenant=request.tenant,
            function=request.function.name,
            status=Status.FAILED,
            attempt=attempt,
            outcome=Outcome.PLATFORM_ERROR,
            error=InvocationError(kind="platform", message=message),
            accepted_at=request.accepted_at,
            finished_at=utcnow(),
            timeout_ms=request.function.limits.timeout_ms,
            trace_id=request.trace_id,
        )
        event = LifecycleEvent.for_record(EventType.FAILED, record)
        pending = [
            await put_nowait(self._js, names.INVOCATIONS_BUCKET, request.id, record),
            await publish_event(self._js, event),
        ]
        await settle(pending)
        if request.reply_to:  # after the record is durable: the caller can read it at once
            await self._nc.publish(request.reply_to, encode(record))
        else:
            await retries.dead_letter(self._js, request, record, attempt=attempt)
        await queue_callback(self._js, request)
        await msg.ack()


def _span_attributes(request: InvocationRequest, msg: Msg, delivered: int) -> dict[str, str | int]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": msg.subject,
        "messaging.consumer.group.name": names.SCHEDULER_CONSUMER,
        "messaging.message.delivery_count": delivered,
        "soulbox.invocation_id": request.id,
        "soulbox.function": request.function.name,
        "soulbox.tenant": request.tenant,
    }
