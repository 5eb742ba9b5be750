"""The audit log: every lifecycle event and every API call, per tenant, hash-chained.

Two inputs, one writer:

    SB_EVENTS ──(durable "audit")──> AuditRecorder ──┐
                                                      ├──> AuditLog.append ──> SB_AUDIT (chained)
    SB_AUDIT_INTAKE ─(durable "audit")─> IntakeRecorder ┘

The gateway never writes the log itself: ``record_api_call`` puts the record
on the intake stream, and the audit consumer appends it to the chain (see
:mod:`.auditlog` for how two audit consumers stay correct, :mod:`.chain` for
the hashes, :mod:`.tenantkeys` for why records name tenants by pseudonym).
A record's position in the log is its stream sequence, which is also the
paging cursor of ``read_audit``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.api import PubAck

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.errors import InvalidRequest, SchemaError
from soulbox.core.eventbatch import batcher
from soulbox.core.ledger import AuditRecord
from soulbox.core.logging import get_logger
from soulbox.core.schemas import LifecycleEvent

from .auditblocks import after_message, place, position, records_of
from .auditlog import AuditLog
from .chain import FORM
from .streamread import read_stream
from .tenantkeys import TenantKeys

log = get_logger(__name__)


MAX_PAGE: Final = 1000
"""The most records ``read_audit`` returns at once."""


_DETAIL_HEAD: Final = ("attempt", "cpu_ms", "duration_ms", "egress_bytes")
_DETAIL_TAIL: Final = (
    "function",
    "invocation_id",
    "memory_limit_mb",
    "peak_memory_bytes",
    "sandbox_id",
    "seconds",
    "tier",
    "worker",
)
"""The event's fields an audit record keeps in ``detail``, in sorted key order (see ``event_fields``)
around ``error_kind`` and ``error_message``."""


def _event_detail(event: LifecycleEvent) -> dict[str, str | int | float | bool | None]:
    """The event's fields an audit record keeps in ``detail`` (those set: not None, not empty), in sorted
    key order. Enum members stay members: they are their values (``StrEnum``), to compare and to pack."""
    fields = event.__dict__  # the model's fields, read without a descriptor call each
    detail = {key: value for key in _DETAIL_HEAD if (value := fields[key]) is not None}
    if (error := fields["error"]) is not None:
        detail["error_kind"], detail["error_message"] = error.kind, error.message
    detail.update((key, value) for key in _DETAIL_TAIL if (value := fields[key]) is not None and value != "")
    return detail


def _resource(event: LifecycleEvent) -> str:
    if event.sandbox_id:
        return f"sandboxes/{event.sandbox_id}"
    return f"functions/{event.function}/invocations/{event.invocation_id}"


def _event_fields(event: LifecycleEvent) -> dict[str, Any]:
    """Every field of the event's audit record but ``hash``, keys (``detail``'s too) in sorted order."""
    return {
        "action": event.type,
        "actor": None,
        "at": event.at,
        "detail": _event_detail(event),
        "id": event.id,
        "kind": "event",
        "origin": f"evt.{event.id}",
        "prev_hash": None,
        "resource": _resource(event),
        "result": event.outcome,
        "source": "events",
        "tenant": event.tenant,
        "v": FORM,
    }


def event_record(event: LifecycleEvent) -> AuditRecord:
    """The audit record of one lifecycle event (tenant still in the clear)."""
    return AuditRecord(**_event_fields(event))


def event_fields(events: list[LifecycleEvent]) -> list[dict[str, Any]]:
    """The fields (without ``hash``) of every event's audit record, as ``AuditLog.append_fields`` takes them.

    Built from the (validated) events without making, validating or dumping
    records: each is ``event_record(event).model_dump()`` exactly (a test
    holds them equal), its keys, ``detail``'s too, in sorted order.
    """
    return [_event_fields(event) for event in events]


class AuditRecorder:
    """Appends every lifecycle event, of every type, to the chained log."""

    def __init__(self, log_: AuditLog) -> None:
        self._log = log_

    async def record(self, events: list[LifecycleEvent]) -> None:
        await self._log.append_fields(event_fields(events), presorted=True)


class IntakeRecorder:
    """Appends the API-call records waiting on the intake stream to the chained log."""

    def __init__(self, log_: AuditLog) -> None:
        self._log = log_

    async def record(self, records: list[AuditRecord]) -> None:
        await self._log.append(records)


async def record_api_call(js: JetStreamContext, record: AuditRecord) -> asyncio.Future[PubAck]:
    """Queue an API call for the audit log; await the returned future to be sure it is stored.

    Published on the intake stream by the process's group commit
    (:class:`~soulbox.core.eventbatch.EventBatcher`): alone, with
    ``Nats-Msg-Id = api.<record.id>`` (the same call sent twice is kept once),
    or, while the previous message is on its way, in a batch with the calls
    made meanwhile. The audit consumer chains it. The future fails after the
    batcher's ack timeout when the ack is lost.
    """
    origin = f"api.{record.id}"
    return batcher(js).publish_encoded(
        names.AUDIT_INTAKE_API_SUBJECT, encode(record.model_copy(update={"origin": origin})), origin
    )


def new_record_id() -> str:
    """A fresh id for an audit record of an API call."""
    return uuid.uuid4().hex


async def read_audit(
    js: JetStreamContext,
    keys: TenantKeys,
    tenant: str,
    *,
    after_seq: int = 0,
    limit: int = 100,
    timeout: float = 5.0,
) -> tuple[list[tuple[int, AuditRecord]], int]:
    """The tenant's next ``limit`` audit records after position ``after_seq``.

    A record's position is its message's stream sequence and its index in the
    message folded into one integer (:func:`.auditblocks.position`; a message
    holds one record or a block). Returns ``(records, next)`` where ``records``
    pairs each record with its position, oldest first, and ``next`` is the
    ``after_seq`` to pass for the following page (``after_seq`` itself when
    nothing was new). ``tenant`` ``_`` reads the records without a tenant; a
    tenant that was never recorded (or was erased) has none. Records name the
    tenant by its pseudonym. Undecodable messages are logged and skipped.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
    if after_seq < 0:
        raise InvalidRequest("after_seq must not be negative")
    names.audit_tenant_filter(tenant)  # validates the name
    token = await keys.lookup(tenant)
    if token is None:
        return [], after_seq
    page: list[tuple[int, AuditRecord]] = []
    next_position = after_seq
    start_seq, skip = place(after_seq)  # resume inside message start_seq, after its record skip
    async for msg in read_stream(
        js,
        names.AUDIT_STREAM,
        start_seq=max(start_seq, 1),
        subject=names.audit_tenant_filter(token),
        limit=limit,
        timeout=timeout,
    ):
        seq = msg.metadata.sequence.stream
        try:
            records = records_of(msg.data)
        except SchemaError as exc:
            log.warning("audit.undecodable", seq=seq, subject=msg.subject, error=exc.message)
            next_position = max(next_position, after_message(seq))
            continue
        for index, record in enumerate(records):
            if seq == start_seq and index <= skip:
                continue  # this page starts inside the block
            if len(page) == limit:
                return page, next_position
            page.append((position(seq, index), record))
            next_position = position(seq, index)
    return page, next_position
