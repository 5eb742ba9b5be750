"""A sandbox's log on ``SB_LOGS``: kept after the sandbox (and its worker) is gone, and followable.

The hosting worker publishes the lines of a sandbox from the moment it is
handed out (the lines it printed in the warm pool first): a flusher sends
what gathered as one :class:`~soulbox.core.sandboxes.SandboxLogBatch` per
wake-up with ``publish_async``, and a last batch with ``end`` when the
sandbox ends. Gateways read the subject back with an ordered consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from nats.js import JetStreamContext
from nats.js.api import PubAck

from . import names
from .codec import decode, encode
from .errors import SchemaError
from .logging import get_logger
from .outputlog import ACK_TIMEOUT_S, read_subject, stop_flusher, subject_has_messages
from .sandboxes import SandboxLogBatch, SandboxLogLine

log = get_logger(__name__)

MAX_QUEUED = 10_000  # lines waiting for the flusher; past it (NATS stalled) lines are dropped and counted
MAX_BATCH = 500


class SandboxLogPublisher:
    """Takes a sandbox's log lines without blocking and publishes them in batches."""

    def __init__(self, js: JetStreamContext, *, tenant: str, sandbox_id: str) -> None:
        self._js = js
        self._subject = names.sandbox_logs_subject(tenant, sandbox_id)
        self._sandbox_id = sandbox_id
        self._queue: list[SandboxLogLine] = []
        self._dropped = 0
        self._acks: set[asyncio.Future[PubAck]] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self._flusher = asyncio.create_task(self._flush_loop())

    def write(self, line: SandboxLogLine) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._dropped += 1
            return
        self._queue.append(line)
        self._wake.set()

    async def close(self) -> None:
        """Publish what is left and the end; wait (bounded) for the acknowledgements; never raises."""
        self._closing = True
        self._wake.set()
        await stop_flusher(self._flusher)  # it finishes the batch it is sending
        await self._flush(end=True)
        pending: set[asyncio.Future[PubAck]] = set()
        if self._acks:
            _, pending = await asyncio.wait(list(self._acks), timeout=ACK_TIMEOUT_S)
        for ack in pending:
            ack.cancel()
        if pending or self._dropped:
            log.warning(
                "sandbox.log_unconfirmed", sandbox=self._sandbox_id, batches=len(pending), dropped=self._dropped
            )

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            await self._flush()

    async def _flush(self, *, end: bool = False) -> None:
        self._wake.clear()
        lines, self._queue = self._queue, []
        batches = [lines[i : i + MAX_BATCH] for i in range(0, len(lines), MAX_BATCH)] or [[]]
        for i, batch in enumerate(batches):
            last = end and i == len(batches) - 1
            if not batch and not last:
                continue
            try:
                ack = await self._js.publish_async(self._subject, encode(SandboxLogBatch(lines=batch, end=last)))
            except Exception as exc:  # NATS away: these lines are lost, the sandbox goes on
                log.warning("sandbox.log_publish_failed", sandbox=self._sandbox_id, error=repr(exc))
                continue
            self._acks.add(ack)
            ack.add_done_callback(self._acks.discard)


async def read_sandbox_log(
    js: JetStreamContext, tenant: str, sandbox_id: str, *, follow: bool
) -> AsyncGenerator[SandboxLogLine, None]:
    """The sandbox's stored lines in order; with ``follow`` also those to come, until the sandbox ends."""
    async for msg in read_subject(js, names.sandbox_logs_subject(tenant, sandbox_id), follow=follow):
        try:
            batch = decode(SandboxLogBatch, msg.data)
        except SchemaError as exc:
            log.warning("sandbox.bad_log_batch", sandbox=sandbox_id, error=exc.message)
            continue
        for line in batch.lines:
            yield line
        if batch.end:
            return


async def has_sandbox_log(js: JetStreamContext, tenant: str, sandbox_id: str) -> bool:
    """Whether anything of the sandbox is stored under ``tenant``."""
    return await subject_has_messages(js, names.sandbox_logs_subject(tenant, sandbox_id))
