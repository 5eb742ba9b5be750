"""Billing: metering lifecycle events into usage entries, exactly once.

Each *meter* turns the events it bills into ``UsageEntry`` values, one per
billed unit, stored under ``<tenant>.<function>.<unit id>``. Exactly-once
billing on at-least-once delivery comes from that key: a redelivered (or
re-published) event rewrites its entry with identical content, so a sum over
the bucket counts it once, whatever the consumer did before it died.

    invocation (terminal events, unit = invocation id):
        billable_ms = max(1, ceil(duration_ms)); memory_mb = the event's limit, else the default
        gb_seconds  = memory_mb / 1024 * billable_ms / 1000; cpu_seconds, egress_bytes when measured
    sandbox (paused/killed events, unit = event id): sandbox_seconds = the event's seconds

A new kind of usage is one more ``Meter`` in ``METERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from soulbox.core import names, store
from soulbox.core.codec import encode
from soulbox.core.errors import Unavailable
from soulbox.core.ledger import UsageEntry
from soulbox.core.schemas import EventType, LifecycleEvent

from .pipeline import Publish, Publisher, Refused

TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.TIMED_OUT})
SANDBOX_BILLED_EVENTS = frozenset({EventType.SANDBOX_PAUSED, EventType.SANDBOX_KILLED})


def invocation_entry(event: LifecycleEvent, default_memory_mb: int) -> UsageEntry:
    """The usage entry a terminal invocation event bills."""
    billable_ms = max(1, math.ceil(event.duration_ms or 0.0))
    memory_mb = event.memory_limit_mb or default_memory_mb
    return UsageEntry(
        invocation_id=event.invocation_id,
        tenant=event.tenant,
        function=event.function,
        tier=event.tier,
        outcome=event.outcome,
        at=event.at,
        billable_ms=billable_ms,
        memory_mb=memory_mb,
        gb_seconds=memory_mb / 1024 * billable_ms / 1000,
        cpu_seconds=(event.cpu_ms or 0.0) / 1000,
        egress_bytes=event.egress_bytes or 0,
    )


def sandbox_entry(event: LifecycleEvent, default_memory_mb: int) -> UsageEntry:
    """The usage entry of a sandbox's running period that ended with ``event``."""
    return UsageEntry(
        invocation_id=event.id,
        tenant=event.tenant,
        function=event.function,
        tier=event.tier,
        outcome=None,
        at=event.at,
        billable_ms=0,
        memory_mb=event.memory_limit_mb or 0,
        gb_seconds=0.0,
        kind="sandbox",
        invocations=0,
        sandbox_seconds=event.seconds or 0.0,
        cpu_seconds=(event.cpu_ms or 0.0) / 1000,
        egress_bytes=event.egress_bytes or 0,
    )


@dataclass(frozen=True, slots=True)
class Meter:
    """Bills the events of ``types`` with ``entry``; ``unit`` picks the id the entry is keyed by."""

    kind: str
    types: frozenset[EventType]
    entry: Callable[[LifecycleEvent, int], UsageEntry]
    unit: Callable[[LifecycleEvent], str]


METERS: tuple[Meter, ...] = (
    Meter("invocation", TERMINAL_EVENTS, invocation_entry, lambda e: e.invocation_id),
    Meter("sandbox", SANDBOX_BILLED_EVENTS, sandbox_entry, lambda e: e.id),
)
_BY_TYPE = {event_type: meter for meter in METERS for event_type in meter.types}


def usage_entry(event: LifecycleEvent, *, default_memory_mb: int) -> tuple[str, UsageEntry] | None:
    """The ``(key, entry)`` an event bills, or None when no meter bills it."""
    meter = _BY_TYPE.get(event.type)
    if meter is None:
        return None
    entry = meter.entry(event, default_memory_mb)
    return names.billing_key(entry.tenant, entry.function, meter.unit(event)), entry


class BillingRecorder:
    """Writes a ``UsageEntry`` to the billing bucket for every billed event.

    The puts are pipelined through :class:`.pipeline.Publisher`, whose reply
    parsing costs a few microseconds (nats-py's ``PubAck`` costs ~10 times that).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        default_memory_mb: int,
        bucket: str = names.BILLING_BUCKET,
        ack_timeout: float = 5.0,
    ) -> None:
        self._publisher = Publisher(nc)
        self._default_memory_mb = default_memory_mb
        self._bucket = bucket
        self._ack_timeout = ack_timeout

    async def record(self, events: list[LifecycleEvent]) -> None:
        puts = []
        for event in events:
            billed = usage_entry(event, default_memory_mb=self._default_memory_mb)
            if billed is not None:
                key, entry = billed
                puts.append(Publish(store.kv_subject(self._bucket, key), encode(entry), {}))
        for outcome in await self._publisher.publish(puts, timeout=self._ack_timeout):
            if isinstance(outcome, Refused):
                raise Unavailable(f"billing put refused: {outcome.description} ({outcome.err_code})")

    async def close(self) -> None:
        await self._publisher.close()
