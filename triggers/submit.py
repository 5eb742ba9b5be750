"""Putting invocations on the stream from the trigger service.

The same steps as the gateway's submit: the ``accepted`` event, the
``accepted`` record for callers that will poll, then the request on the
invocation stream, de-duplicated by invocation id.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.errors import FunctionNotFound, Overloaded, Unavailable
from soulbox.core.inbox import Inbox
from soulbox.core.schemas import (
    EventType,
    FunctionSpec,
    InvocationRecord,
    InvocationRequest,
    LifecycleEvent,
    Status,
)
from soulbox.core.store import get_model, publish_event, put_nowait, settle

QUEUE_FULL_CODES = frozenset({10077, 10047, 10048})  # JetStream: stream message / byte / storage limits


def new_invocation_id() -> str:
    """Time-ordered, unique: 12 hex digits of milliseconds, then 16 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


class Submitter:
    def __init__(self, js: JetStreamContext, buckets: Buckets, inbox: Inbox) -> None:
        self._js = js
        self._buckets = buckets
        self._inbox = inbox

    async def function(self, tenant: str, name: str) -> FunctionSpec:
        spec = await get_model(self._buckets.functions, names.function_key(tenant, name), FunctionSpec)
        if spec is None:
            raise FunctionNotFound(name)
        return spec

    async def submit(
        self, spec: FunctionSpec, body: bytes, *, trigger: str, invocation_id: str | None = None, wait: bool = False
    ) -> tuple[str, asyncio.Future[Msg] | None]:
        """The invocation's id, and when ``wait``, the future of its finished record's message."""
        invocation_id = invocation_id or new_invocation_id()
        request = InvocationRequest(
            id=invocation_id,
            tenant=spec.tenant,
            function=spec,
            input=body,
            reply_to=self._inbox.subject(invocation_id) if wait else None,
            trigger=trigger,
        )
        record = InvocationRecord(
            id=invocation_id,
            tenant=spec.tenant,
            function=spec.name,
            status=Status.ACCEPTED,
            accepted_at=request.accepted_at,
            timeout_ms=spec.limits.timeout_ms,
        )
        result = self._inbox.expect(invocation_id) if wait else None
        try:
            pending = [await publish_event(self._js, LifecycleEvent.for_record(EventType.ACCEPTED, record))]
            if not wait:
                pending.append(await put_nowait(self._js, names.INVOCATIONS_BUCKET, invocation_id, record))
            await self._js.publish(
                names.invocation_subject(spec.tenant), encode(request), headers={"Nats-Msg-Id": invocation_id}
            )
            await settle(pending)
        except APIError as exc:
            self._inbox.discard(invocation_id)
            if exc.err_code in QUEUE_FULL_CODES:
                with contextlib.suppress(Exception):  # refused for sure: no record of a run that never was
                    await self._buckets.invocations.delete(invocation_id)
                raise Overloaded("the invocation queue is full") from exc
            raise Unavailable(f"could not enqueue the invocation: {exc}") from exc
        except BaseException:
            self._inbox.discard(invocation_id)
            raise
        return invocation_id, result

    def discard(self, invocation_id: str) -> None:
        self._inbox.discard(invocation_id)
