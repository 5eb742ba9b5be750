"""The usage report: billed entries summed per function and per hour or day, with cost.

cost = invocations * per_invocation + gb_seconds * per_gb_second
     + cpu_seconds * per_cpu_second + sandbox_seconds * per_sandbox_second
     + egress_bytes / 1e9 * per_egress_gb
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from soulbox.core import store
from soulbox.core.ledger import UsageEntry
from soulbox.core.schemas import checked_name
from soulbox.core.settings import PriceList

Granularity = Literal["day", "hour"]


class UsageTotals(BaseModel):
    """Sums over a set of usage entries and what they cost."""

    model_config = ConfigDict(frozen=True)
    invocations: int = 0
    billable_ms: int = 0
    gb_seconds: float = 0.0
    cpu_seconds: float = 0.0
    sandbox_seconds: float = 0.0
    egress_bytes: int = 0
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
    prices: PriceList
    total: UsageTotals
    functions: list[FunctionUsage]
    buckets: list[UsageBucket]


@dataclass(slots=True)
class _Sum:
    invocations: int = 0
    billable_ms: int = 0
    gb_seconds: float = 0.0
    cpu_seconds: float = 0.0
    sandbox_seconds: float = 0.0
    egress_bytes: int = 0

    def add(self, entry: UsageEntry) -> None:
        self.invocations += entry.invocations
        self.billable_ms += entry.billable_ms
        self.gb_seconds += entry.gb_seconds
        self.cpu_seconds += entry.cpu_seconds
        self.sandbox_seconds += entry.sandbox_seconds
        self.egress_bytes += entry.egress_bytes

    def cost(self, prices: PriceList) -> float:
        return (
            self.invocations * prices.per_invocation
            + self.gb_seconds * prices.per_gb_second
            + self.cpu_seconds * prices.per_cpu_second
            + self.sandbox_seconds * prices.per_sandbox_second
            + self.egress_bytes / 1e9 * prices.per_egress_gb
        )

    def totals(self, model: type[T], prices: PriceList, **extra: Any) -> T:
        return model(
            invocations=self.invocations,
            billable_ms=self.billable_ms,
            gb_seconds=self.gb_seconds,
            cpu_seconds=self.cpu_seconds,
            sandbox_seconds=self.sandbox_seconds,
            egress_bytes=self.egress_bytes,
            cost=self.cost(prices),
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

    def functions(self, prices: PriceList) -> list[FunctionUsage]:
        return [s.totals(FunctionUsage, prices, function=name) for name, s in sorted(self.by_function.items())]


def bucket_start(at: datetime, granularity: Granularity) -> datetime:
    """The start of the UTC day or hour ``at`` falls in."""
    at = utc(at)
    if granularity == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(minute=0, second=0, microsecond=0)


def utc(at: datetime) -> datetime:
    """Aware datetimes in UTC; naive ones are taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


async def usage_entries(
    kv: KeyValue,
    tenant: str | None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    function: str | None = None,
) -> list[tuple[str, UsageEntry]]:
    """The entries with ``since <= at < until`` of one tenant (all when None), optionally one function."""
    key_filter = ">"
    if tenant is not None:
        key_filter = f"{checked_name(tenant, what='tenant')}.>"
        if function is not None:
            key_filter = f"{tenant}.{checked_name(function, what='function')}.>"
    lower = utc(since) if since is not None else None
    upper = utc(until) if until is not None else None
    found: list[tuple[str, UsageEntry]] = []
    async for key, entry in store.scan(kv, key_filter, UsageEntry):
        at = utc(entry.at)
        if (lower is None or at >= lower) and (upper is None or at < upper):
            found.append((key, entry))
    return found


async def usage(
    kv: KeyValue,
    tenant: str,
    *,
    prices: PriceList,
    since: datetime | None = None,
    until: datetime | None = None,
    function: str | None = None,
    granularity: Granularity | None = "day",
) -> UsageReport:
    """Aggregate the tenant's usage entries with ``since <= at < until``.

    Raises ``InvalidRequest`` for a tenant or function that is not a valid name.
    """
    entries = [entry for _key, entry in await usage_entries(kv, tenant, since=since, until=until, function=function)]
    return build_report(
        tenant, entries, prices=prices, since=since, until=until, function=function, granularity=granularity
    )


def build_report(
    tenant: str,
    entries: list[UsageEntry],
    *,
    prices: PriceList,
    since: datetime | None,
    until: datetime | None,
    function: str | None,
    granularity: Granularity | None,
) -> UsageReport:
    """The report over ``entries`` (already filtered)."""
    overall = _Split()
    buckets: dict[datetime, _Split] = {}
    for entry in entries:
        overall.add(entry)
        if granularity is not None:
            buckets.setdefault(bucket_start(entry.at, granularity), _Split()).add(entry)
    return UsageReport(
        tenant=tenant,
        since=utc(since) if since is not None else None,
        until=utc(until) if until is not None else None,
        function=function,
        granularity=granularity,
        prices=prices,
        total=overall.total.totals(UsageTotals, prices),
        functions=overall.functions(prices),
        buckets=[
            split.total.totals(UsageBucket, prices, start=start, functions=split.functions(prices))
            for start, split in sorted(buckets.items())
        ],
    )


def report_rows(report: UsageReport) -> list[dict[str, object]]:
    """One flat row per (bucket, function): the CSV form of a report."""
    rows: list[dict[str, object]] = []
    for bucket in report.buckets:
        for fn in bucket.functions:
            rows.append(
                {
                    "tenant": report.tenant,
                    "bucket_start": bucket.start.isoformat(),
                    **fn.model_dump(mode="json"),
                }
            )
    return rows
