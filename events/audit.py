"""The audit log: every lifecycle event and every API call, per tenant, in order.

Records are ``AuditRecord`` messages on the ``SB_AUDIT`` stream (append only:
the stream denies deletes and purges). A record's position in the log is its
stream sequence, which is also the paging cursor of ``read_audit``.
Re-recording is harmless: each publish carries a ``Nats-Msg-Id`` derived from
the record's origin (``evt.<event id>``, ``api.<record id>``), so the stream
drops copies that arrive within its de-duplication window.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.api import PubAck

from soulbox.core import names
from soulbox.core.codec import decode, encode
from soulbox.core.errors import InvalidRequest, SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.names import audit_api_subject, audit_event_subject, audit_tenant_filter
from soulbox.core.schemas import AuditRecord, LifecycleEvent
from soulbox.core.store import settle

log = get_logger(__name__)

MAX_PAGE: Final = 1000
"""The most records ``read_audit`` returns at once."""


def event_record(event: LifecycleEvent) -> AuditRecord:
    """The audit record of one lifecycle event."""
    detail: dict[str, str | int | float | bool | None] = {
        "invocation_id": event.invocation_id,
        "function": event.function,
        "attempt": event.attempt,
    }
    if event.tier is not None:
        detail["tier"] = event.tier.value
    if event.worker is not None:
        detail["worker"] = event.worker
    if event.duration_ms is not None:
        detail["duration_ms"] = event.duration_ms
    if event.peak_memory_bytes is not None:
        detail["peak_memory_bytes"] = event.peak_memory_bytes
    if event.memory_limit_mb is not None:
        detail["memory_limit_mb"] = event.memory_limit_mb
    if event.error is not None:
        detail["error_kind"] = event.error.kind
        detail["error_message"] = event.error.message
    return AuditRecord(
        id=event.id,
        kind="event",
        at=event.at,
        tenant=event.tenant,
        action=event.type.value,
        resource=f"functions/{event.function}/invocations/{event.invocation_id}",
        result=event.outcome.value if event.outcome is not None else None,
        source="events",
        detail=detail,
    )


class AuditRecorder:
    """Publishes every lifecycle event, of every type, to the audit log."""

    def __init__(self, js: JetStreamContext, *, ack_timeout: float = 5.0) -> None:
        self._js = js
        self._ack_timeout = ack_timeout

    async def record(self, events: list[LifecycleEvent]) -> None:
        futures = [
            await self._js.publish_async(
                audit_event_subject(event.tenant),
                encode(event_record(event)),
                headers={"Nats-Msg-Id": f"evt.{event.id}"},
            )
            for event in events
        ]
        await settle(futures, timeout=self._ack_timeout)


async def record_api_call(js: JetStreamContext, record: AuditRecord) -> asyncio.Future[PubAck]:
    """Append an API call to the audit log; await the returned future to be sure it is stored.

    Published on ``sb.audit.<tenant>.api`` (``_`` when the record has no valid
    tenant) with ``Nats-Msg-Id = api.<record.id>``. Like every
    ``publish_async`` future, it has no deadline of its own: bound the wait.
    """
    return await js.publish_async(
        audit_api_subject(record.tenant),
        encode(record),
        headers={"Nats-Msg-Id": f"api.{record.id}"},
    )


def new_record_id() -> str:
    """A fresh id for an audit record of an API call."""
    return uuid.uuid4().hex


async def read_audit(
    js: JetStreamContext,
    tenant: str,
    *,
    after_seq: int = 0,
    limit: int = 100,
    timeout: float = 5.0,
) -> tuple[list[tuple[int, AuditRecord]], int]:
    """The tenant's next ``limit`` audit records after stream sequence ``after_seq``.

    Returns ``(records, next_seq)`` where ``records`` pairs each record with its
    stream sequence, oldest first, and ``next_seq`` is the ``after_seq`` to
    pass for the following page (``after_seq`` itself when nothing was new).
    Returns as soon as the records that exist are read. ``tenant`` ``_``
    reads the records without a tenant. Records that cannot be decoded are
    logged and skipped (their sequence still advances the cursor).
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
    if after_seq < 0:
        raise InvalidRequest("after_seq must not be negative")
    name = f"audit-read-{uuid.uuid4().hex}"
    info = await js.add_consumer(
        names.AUDIT_STREAM,
        api.ConsumerConfig(
            name=name,
            filter_subject=audit_tenant_filter(tenant),
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    try:
        wanted = min(limit, info.num_pending or 0)
        if wanted == 0:
            return [], after_seq
        sub = await js.pull_subscribe_bind(consumer=name, stream=names.AUDIT_STREAM)
        try:
            msgs = await sub.fetch(wanted, timeout=timeout)
        finally:
            await sub.unsubscribe()
    finally:
        await _delete_consumer(js, name)
    page: list[tuple[int, AuditRecord]] = []
    next_seq = after_seq
    for msg in msgs:
        seq = msg.metadata.sequence.stream
        next_seq = max(next_seq, seq)
        try:
            page.append((seq, decode(AuditRecord, msg.data)))
        except SchemaError as exc:
            log.warning("audit.undecodable", seq=seq, subject=msg.subject, error=exc.message)
    return page, next_seq


async def _delete_consumer(js: JetStreamContext, name: str) -> None:
    """Best effort: the consumer also expires on its own after its inactive threshold."""
    try:
        await js.delete_consumer(names.AUDIT_STREAM, name)
    except NatsError as exc:
        log.debug("audit.reader_cleanup_failed", consumer=name, error=repr(exc))
