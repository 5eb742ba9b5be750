"""Placement of new sandboxes: the schedulers answer ``sb.sandboxes.create`` as a queue group.

A create goes to the live worker with the most free sandbox slots (from
heartbeats, and the count in each worker's answer, plus this scheduler's
placements still unanswered); a worker that is gone or full is skipped for
the next. The worker's reply (the sandbox record, or an error) is passed back to
the gateway unchanged.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from soulbox.core import names, tracing
from soulbox.core.codec import decode, encode
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import SandboxCreate, SandboxReply
from soulbox.core.settings import Settings

from .directory import WorkerDirectory
from .placement import pick_sandbox_worker

log = get_logger(__name__)


class SandboxPlacer:
    def __init__(self, settings: Settings, nc: NATS, directory: WorkerDirectory) -> None:
        self._settings = settings
        self._nc = nc
        self._directory = directory
        self._placed: Counter[str] = Counter()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            names.SANDBOX_CREATE_SUBJECT, queue=names.SANDBOX_CREATE_QUEUE, cb=self._on_create
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    @tracing.handler("sandbox place")
    async def _on_create(self, msg: Msg) -> None:
        try:
            request = decode(SandboxCreate, msg.data)
        except SchemaError as exc:
            await msg.respond(encode(SandboxReply(error_code=exc.code, error_message=exc.message)))
            return
        tracing.set_attribute("soulbox.sandbox_id", request.sandbox_id)
        await msg.respond(await self._place(request, msg.data))

    async def _place(self, request: SandboxCreate, data: bytes) -> bytes:
        timeout = self._settings.sandboxes.ready_timeout_s + 5.0
        tried: set[str] = set()
        while True:
            worker = pick_sandbox_worker(self._directory.live(), self._placed, exclude=frozenset(tried))
            if worker is None:
                return encode(
                    SandboxReply(error_code="overloaded", error_message="no worker has room for another sandbox")
                )
            tried.add(worker.worker_id)
            self._placed[worker.worker_id] += 1
            subject = names.worker_sandbox_subject(worker.worker_id, "create")
            try:
                reply = await self._nc.request(subject, data, timeout=timeout, headers=tracing.inject())
            except (NoRespondersError, NatsTimeoutError) as exc:
                log.warning("scheduler.sandbox_worker_failed", worker=worker.worker_id, error=type(exc).__name__)
                continue
            finally:
                self._forget(worker.worker_id)
            answer = decode(SandboxReply, reply.data)
            if answer.sandboxes is not None:
                self._directory.report_sandboxes(worker.worker_id, answer.sandboxes)
            if answer.error_code == "overloaded":  # full meanwhile: the next one
                continue
            log.info("scheduler.sandbox_placed", sandbox=request.sandbox_id, worker=worker.worker_id)
            return reply.data

    def _forget(self, worker_id: str) -> None:
        self._placed[worker_id] -= 1
        if self._placed[worker_id] <= 0:
            del self._placed[worker_id]
