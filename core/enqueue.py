"""Putting an invocation on the work queue: the one sequence the gateway and the trigger service share.

The ``accepted`` event, the ``accepted`` record when the caller will poll for
it, then the request on the invocation stream, de-duplicated by invocation
id (``Nats-Msg-Id``); everything awaited before returning. A full stream
(JetStream's limits) is ``Overloaded`` and frees the id's record, so a retry
with the same id runs; anything else is ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import secrets
import time

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError
from nats.js.kv import KeyValue

from . import names, tracing
from .codec import encode
from .errors import Overloaded, Unavailable
from .schemas import EventType, InvocationRecord, InvocationRequest, LifecycleEvent, Status
from .store import publish_event, put_nowait, settle

QUEUE_FULL_CODES = frozenset({10077, 10047, 10048})  # JetStream: stream message / byte / storage limits


def new_invocation_id() -> str:
    """Time-ordered, unique: 12 hex digits of milliseconds, then 16 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def accepted_record(request: InvocationRequest) -> InvocationRecord:
    spec = request.function
    return InvocationRecord(
        id=request.id,
        tenant=request.tenant,
        function=spec.name,
        status=Status.ACCEPTED,
        trace_id=request.trace_id,
        accepted_at=request.accepted_at,
        timeout_ms=spec.limits.timeout_ms,
    )


async def enqueue(
    js: JetStreamContext,
    invocations: KeyValue,
    request: InvocationRequest,
    record: InvocationRecord,
    *,
    write_record: bool,
    retry_after: float = 1.0,
) -> PubAck:
    """Accept ``request``: its event (and ``record`` if ``write_record``), then the stream; the stream's ack."""
    subject = names.invocation_subject(request.tenant)
    with tracing.span(f"publish {names.INVOCATIONS_STREAM}", kind=tracing.SpanKind.PRODUCER) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": "nats",
                    "messaging.destination.name": subject,
                    "soulbox.invocation_id": request.id,
                    "soulbox.function": request.function.name,
                    "soulbox.tenant": request.tenant,
                }
            )
        return await _enqueue(js, invocations, request, record, subject, write_record, retry_after)


async def _enqueue(
    js: JetStreamContext,
    invocations: KeyValue,
    request: InvocationRequest,
    record: InvocationRecord,
    subject: str,
    write_record: bool,
    retry_after: float,
) -> PubAck:
    try:
        pending = [await publish_event(js, LifecycleEvent.for_record(EventType.ACCEPTED, record))]
        if write_record:
            pending.append(await put_nowait(js, names.INVOCATIONS_BUCKET, request.id, record))
        ack = await js.publish(subject, encode(request), headers=tracing.inject({"Nats-Msg-Id": request.id}))
        await settle(pending)
    except APIError as exc:  # nats-py reports a full stream as a 503 ServiceUnavailableError
        if exc.err_code in QUEUE_FULL_CODES:
            # Refused for sure: free the id, so a retry with it (or its Idempotency-Key) runs.
            with contextlib.suppress(Exception):
                await invocations.delete(request.id)
            raise Overloaded("the invocation queue is full", retry_after=retry_after) from exc
        raise Unavailable(f"could not enqueue the invocation: {exc}") from exc
    except Unavailable:
        raise
    except Exception as exc:  # connection lost, timeouts
        raise Unavailable(f"could not enqueue the invocation: {exc}") from exc
    return ack
