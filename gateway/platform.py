"""What the gateway's handlers share: connections, buckets and the registry."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError
from starlette.requests import Request

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.errors import InvalidRequest, Overloaded, Unavailable
from soulbox.core.schemas import (
    EventType,
    FunctionSpec,
    InvocationRecord,
    InvocationRequest,
    LifecycleEvent,
    Status,
)
from soulbox.core.settings import Settings
from soulbox.core.store import publish_event, put_nowait, settle
from soulbox.core.tunnel import TunnelClient

from .registry import FunctionRegistry
from .results import ResultWaiter
from .sandboxes.control import SandboxControlPlane

INVOCATION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
QUEUE_FULL_CODES = frozenset({10077, 10047, 10048})  # JetStream: stream message / byte / storage limits


def new_invocation_id() -> str:
    """Time-ordered, unique: 12 hex digits of milliseconds, then 16 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


@dataclass(slots=True)
class Submission:
    request: InvocationRequest
    duplicate: bool  # the id was submitted before: this call started nothing new
    result: asyncio.Future[Msg] | None = None  # the record's message; set when waiting and not a duplicate


@dataclass(slots=True)
class Platform:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    buckets: Buckets
    registry: FunctionRegistry
    waiter: ResultWaiter
    sandboxes: SandboxControlPlane
    tunnel: TunnelClient

    async def submit(
        self,
        spec: FunctionSpec,
        body: bytes,
        *,
        invocation_id: str | None,
        wait: bool,
        trace_id: str | None,
        trigger: str | None = None,
        callback_url: str | None = None,
    ) -> Submission:
        """Record the invocation as accepted and put it on the invocation stream."""
        client_id = invocation_id is not None
        if invocation_id is None:
            invocation_id = new_invocation_id()
        elif not INVOCATION_ID_RE.match(invocation_id):
            raise InvalidRequest("X-Invocation-Id must be 8-64 characters of [A-Za-z0-9_-]")
        request = InvocationRequest(
            id=invocation_id,
            tenant=spec.tenant,
            function=spec,
            input=body,
            reply_to=self.waiter.reply_subject(invocation_id) if wait else None,
            trace_id=trace_id,
            trigger=trigger,
            callback_url=callback_url,
        )
        record = InvocationRecord(
            id=invocation_id,
            tenant=spec.tenant,
            function=spec.name,
            status=Status.ACCEPTED,
            accepted_at=request.accepted_at,
            timeout_ms=spec.limits.timeout_ms,
        )
        event = LifecycleEvent.for_record(EventType.ACCEPTED, record)
        if client_id:
            # A caller-chosen id may repeat: claim it atomically; a repeat starts nothing.
            try:
                await self.buckets.invocations.create(invocation_id, encode(record))
            except KeyWrongLastSequenceError:
                return Submission(request, duplicate=True)
        result = self.waiter.expect(invocation_id) if wait else None
        try:
            pending = [await publish_event(self.js, event)]
            if not client_id and not wait:
                # An async caller polls the record at once; a sync caller gets the result
                # (and the id) in its response, and the worker writes the record.
                pending.append(await put_nowait(self.js, names.INVOCATIONS_BUCKET, invocation_id, record))
            ack = await self.js.publish(
                names.invocation_subject(spec.tenant),
                encode(request),
                headers={"Nats-Msg-Id": invocation_id},
            )
            await settle(pending)
        except APIError as exc:  # nats-py reports the full stream as a 503 ServiceUnavailableError
            self.waiter.discard(invocation_id)
            if exc.err_code in QUEUE_FULL_CODES:
                # Refused for sure: free the id, so a retry with it (or its Idempotency-Key) runs.
                with contextlib.suppress(Exception):
                    await self.buckets.invocations.delete(invocation_id)
                raise Overloaded("the invocation queue is full", retry_after=self.settings.queue.retry_after_s) from exc
            raise Unavailable(f"could not enqueue the invocation: {exc}") from exc
        except Unavailable:
            self.waiter.discard(invocation_id)
            raise
        except Exception as exc:  # connection lost, timeouts
            self.waiter.discard(invocation_id)
            raise Unavailable(f"could not enqueue the invocation: {exc}") from exc
        if ack.duplicate:
            self.waiter.discard(invocation_id)
            return Submission(request, duplicate=True)
        return Submission(request, duplicate=False, result=result)


def platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p
