"""Delivering completion callbacks: POST the finished record, retried with backoff.

Reads the callbacks work queue (one durable consumer shared by every trigger
service replica). A delivery is a JSON ``POST`` of the invocation record (the
shape of ``GET /v1/invocations/{id}``) with ``Soulbox-Invocation-Id``; any 2xx
is success. Otherwise it is retried after an exponential, jittered delay
(JetStream holds it meanwhile) up to ``callback_attempts`` times, then dropped
with a log line.
"""

from __future__ import annotations

import asyncio
import random

import httpx
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import Callback, InvocationRecord
from soulbox.core.settings import TriggerSettings
from soulbox.core.store import get_model
from soulbox.gateway.models import InvocationOut

log = get_logger(__name__)

CONCURRENCY = 64


class CallbackDeliverer:
    def __init__(self, js: JetStreamContext, invocations: KeyValue, settings: TriggerSettings) -> None:
        self._js = js
        self._invocations = invocations
        self._settings = settings
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, stopping: asyncio.Event) -> None:
        sub = await self._js.pull_subscribe_bind(durable=names.CALLBACKS_CONSUMER, stream=names.CALLBACKS_STREAM)
        async with httpx.AsyncClient(timeout=self._settings.callback_timeout_s, follow_redirects=False) as http:
            while not stopping.is_set():
                await self._slots.acquire()
                self._slots.release()
                try:
                    msgs = await sub.fetch(16, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except Exception as exc:  # NATS reconnecting
                    log.warning("callbacks.fetch_failed", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._deliver(http, msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self._settings.callback_timeout_s)
        await sub.unsubscribe()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _deliver(self, http: httpx.AsyncClient, msg: Msg) -> None:
        try:
            callback = decode(Callback, msg.data)
        except SchemaError as exc:
            log.error("callbacks.bad_message", error=exc.message)
            await msg.term()
            return
        attempt = msg.metadata.num_delivered or 1
        record = await get_model(self._invocations, callback.invocation_id, InvocationRecord)
        if record is None:  # expired: nothing left to tell
            await msg.term()
            return
        body = InvocationOut.of(record).model_dump_json().encode()
        headers = {"Content-Type": "application/json", "Soulbox-Invocation-Id": record.id}
        try:
            response = await http.post(callback.url, content=body, headers=headers)
            ok, reason = response.is_success, f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            await msg.ack()
            log.info("callbacks.delivered", invocation_id=record.id, attempt=attempt)
        elif attempt >= self._settings.callback_attempts:
            await msg.term()
            log.warning("callbacks.given_up", invocation_id=record.id, attempts=attempt, reason=reason)
        else:
            s = self._settings
            delay = min(s.callback_max_delay_s, s.callback_base_delay_s * 2 ** (attempt - 1))
            await msg.nak(delay=delay * (0.5 + 0.5 * random.random()))
            log.info("callbacks.retry", invocation_id=record.id, attempt=attempt, reason=reason)
