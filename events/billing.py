"""Billing: one usage entry per finished invocation, and the usage report.

Exactly-once billing on at-least-once delivery comes from the key: an entry
is stored under ``<tenant>.<function>.<invocation id>``, so a redelivered (or
re-published) terminal event overwrites the entry with identical content.

    billable_ms = max(1, ceil(duration_ms))
    memory_mb   = the event's memory limit, else the configured default
    gb_seconds  = memory_mb / 1024 * billable_ms / 1000
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from soulbox.core import names, store
from soulbox.core.schemas import EventType, LifecycleEvent, UsageEntry, checked_name
from soulbox.core.store import settle

Granularity = Literal["day", "hour"]

TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.TIMED_OUT})


def usage_entry(event: LifecycleEvent, *, default_memory_mb: int) -> UsageEntry:
    """The usage entry a terminal event bills."""
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
    )


class BillingRecorder:
    """Writes a ``UsageEntry`` to the billing bucket for every terminal event."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        default_memory_mb: int,
        bucket: str = names.BILLING_BUCKET,
        ack_timeout: float = 5.0,
    ) -> None:
        self._js = js
        self._default_memory_mb = default_memory_mb
        self._bucket = bucket
        self._ack_timeout = ack_timeout

    async def record(self, events: list[LifecycleEvent]) -> None:
        futures = []
        for event in events:
            if event.type not in TERMINAL_EVENTS:
                continue
            entry = usage_entry(event, default_memory_mb=self._default_memory_mb)
            key = names.billing_key(entry.tenant, entry.function, entry.invocation_id)
            futures.append(await store.put_nowait(self._js, self._bucket, key, entry))
        await settle(futures, timeout=self._ack_timeout)


# The report ---------------------------------------------------------------------


class UsageTotals(BaseModel):
    """Sums over a set of usage entries; ``cost`` is ``gb_seconds * price``."""

    model_config = ConfigDict(frozen=True)
    invocations: int = 0
    billable_ms: int = 0
    gb_seconds: float = 0.0
    cost: float = 0.0


T = TypeVar("T", bound=UsageTotals)


class FunctionUsage(UsageTotals):
    function: str


class UsageBucket(UsageTotals):
    """One time bucket (UTC day or hour starting at ``start``), split by function."""

    start: datetime
    functions: list[FunctionUsage]


class UsageReport(BaseModel):
    """What ``GET /v1/usage`` returns: totals, per function and per time bucket."""

    model_config = ConfigDict(frozen=True)
    tenant: str
    since: datetime | None
    until: datetime | None
    function: str | None
    granularity: Granularity | None
    price_per_gb_s: float
    total: UsageTotals
    functions: list[FunctionUsage]
    buckets: list[UsageBucket]


@dataclass(slots=True)
class _Sum:
    invocations: int = 0
    billable_ms: int = 0
    gb_seconds: float = 0.0

    def add(self, entry: UsageEntry) -> None:
        self.invocations += 1
        self.billable_ms += entry.billable_ms
        self.gb_seconds += entry.gb_seconds

    def totals(self, model: type[T], price: float, **extra: Any) -> T:
        return model(
            invocations=self.invocations,
            billable_ms=self.billable_ms,
            gb_seconds=self.gb_seconds,
            cost=self.gb_seconds * price,
            **extra,
        )


@dataclass(slots=True)
class _Split:
    """A sum plus the same sum split by function."""

    total: _Sum = field(default_factory=_Sum)
    by_function: dict[str, _Sum] = field(default_factory=dict)

    def add(self, entry: UsageEntry) -> None:
        self.total.add(entry)
        self.by_function.setdefault(entry.function, _Sum()).add(entry)

    def functions(self, price: float) -> list[FunctionUsage]:
        return [s.totals(FunctionUsage, price, function=name) for name, s in sorted(self.by_function.items())]


def bucket_start(at: datetime, granularity: Granularity) -> datetime:
    """The start of the UTC day or hour ``at`` falls in."""
    at = _utc(at)
    if granularity == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(minute=0, second=0, microsecond=0)


def _utc(at: datetime) -> datetime:
    """Aware datetimes in UTC; naive ones are taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


async def usage(
    kv: KeyValue,
    tenant: str,
    *,
    price_per_gb_s: float,
    since: datetime | None = None,
    until: datetime | None = None,
    function: str | None = None,
    granularity: Granularity | None = "day",
) -> UsageReport:
    """Aggregate the tenant's usage entries with ``since <= at < until``.

    Entries are streamed from the billing bucket (``kv``) by one ordered
    consumer; ``function`` narrows the scan to one function's keys. Raises
    ``InvalidRequest`` for a tenant or function that is not a valid name.
    """
    key_filter = f"{checked_name(tenant, what='tenant')}.>"
    if function is not None:
        key_filter = f"{tenant}.{checked_name(function, what='function')}.>"
    lower = _utc(since) if since is not None else None
    upper = _utc(until) if until is not None else None
    overall = _Split()
    buckets: dict[datetime, _Split] = {}
    async for _key, entry in store.scan(kv, key_filter, UsageEntry):
        at = _utc(entry.at)
        if (lower is not None and at < lower) or (upper is not None and at >= upper):
            continue
        overall.add(entry)
        if granularity is not None:
            buckets.setdefault(bucket_start(at, granularity), _Split()).add(entry)
    return UsageReport(
        tenant=tenant,
        since=lower,
        until=upper,
        function=function,
        granularity=granularity,
        price_per_gb_s=price_per_gb_s,
        total=overall.total.totals(UsageTotals, price_per_gb_s),
        functions=overall.functions(price_per_gb_s),
        buckets=[
            split.total.totals(UsageBucket, price_per_gb_s, start=start, functions=split.functions(price_per_gb_s))
            for start, split in sorted(buckets.items())
        ],
    )
