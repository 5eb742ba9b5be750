"""Quotas from what billing recorded: invocations per UTC day and GB-seconds per UTC month, per tenant.

:class:`UsageLedger` follows the billing bucket (``sb_billing``, written by the
events process: one entry per billed unit) with a :class:`~soulbox.core.kvmirror.KvMirror` and keeps, per
tenant, the sums of the current day and month in memory, so a quota check on
the hot path is a dictionary lookup. Every gateway replica follows the same
bucket, so they agree. An entry rewritten (a redelivered event) replaces its
earlier contribution instead of adding to it.

Margin: usage counts once billed, so a tenant may overrun a quota by what it
has in flight (queued and running invocations) plus the events process's lag.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from nats.js.kv import KeyValue

from soulbox.core.kvmirror import KvMirror
from soulbox.core.ledger import UsageEntry


@dataclass(frozen=True, slots=True)
class _Counted:
    tenant: str
    day: date
    invocations: int
    gb_seconds: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a quota refuses: its stable message and when to retry."""

    message: str
    retry_after_s: float


def next_day(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    days = calendar.monthrange(now.year, now.month)[1]
    return datetime(now.year, now.month, 1, tzinfo=UTC) + timedelta(days=days)


class UsageLedger:
    """Per tenant: billed invocations today and GB-seconds this month (UTC), kept current by a KvMirror."""

    def __init__(self, billing: KeyValue) -> None:
        self._entries: dict[str, _Counted] = {}  # this month's entries only
        self._day_invocations: dict[str, int] = {}
        self._month_gb_seconds: dict[str, float] = {}
        self._today = datetime.now(UTC).date()
        # The mirror keeps no values of its own: this month's sums are all the ledger needs.
        self._mirror = KvMirror(billing, UsageEntry, on_put=self._apply, on_delete=self._delete, keep=False)

    async def start(self) -> None:
        """Return once the bucket's current entries are counted."""
        await self._mirror.start()

    async def stop(self) -> None:
        await self._mirror.stop()

    def invocations_today(self, tenant: str) -> int:
        self._roll()
        return self._day_invocations.get(tenant, 0)

    def gb_seconds_this_month(self, tenant: str) -> float:
        self._roll()
        return self._month_gb_seconds.get(tenant, 0.0)

    def check(
        self, tenant: str, *, invocations_per_day: int | None, gb_seconds_per_month: float | None
    ) -> Refusal | None:
        """None when ``tenant`` may start another invocation, else the exhausted quota."""
        now = datetime.now(UTC)
        if invocations_per_day is not None and self.invocations_today(tenant) >= invocations_per_day:
            return Refusal(
                f"the quota of {invocations_per_day} invocations per day is used up",
                (next_day(now) - now).total_seconds(),
            )
        if gb_seconds_per_month is not None and self.gb_seconds_this_month(tenant) >= gb_seconds_per_month:
            return Refusal(
                f"the quota of {gb_seconds_per_month:g} GB-seconds per month is used up",
                (next_month(now) - now).total_seconds(),
            )
        return None

    def _roll(self) -> None:
        today = datetime.now(UTC).date()
        if today == self._today:
            return
        new_month = (today.year, today.month) != (self._today.year, self._today.month)
        self._today = today
        if new_month:
            self._entries = {k: c for k, c in self._entries.items() if c.day.month == today.month}
        self._day_invocations = {}
        self._month_gb_seconds = {}
        for counted in self._entries.values():
            self._add(counted, 1)

    def _add(self, counted: _Counted, sign: int) -> None:
        if counted.day == self._today:
            self._day_invocations[counted.tenant] = (
                self._day_invocations.get(counted.tenant, 0) + sign * counted.invocations
            )
        self._month_gb_seconds[counted.tenant] = (
            self._month_gb_seconds.get(counted.tenant, 0.0) + sign * counted.gb_seconds
        )

    def _forget(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._add(old, -1)

    def _delete(self, key: str) -> None:
        self._roll()
        self._forget(key)

    def _apply(self, key: str, entry: UsageEntry) -> None:
        self._roll()
        self._forget(key)
        day = entry.at.astimezone(UTC).date() if entry.at.tzinfo else entry.at.date()
        if (day.year, day.month) != (self._today.year, self._today.month) or day > self._today:
            return  # another month's usage counts against no current quota
        counted = _Counted(entry.tenant, day, entry.invocations, entry.gb_seconds)
        self._entries[key] = counted
        self._add(counted, 1)
