"""Cron schedules: validation and tick arithmetic in the trigger's IANA time zone.

Expressions have 5 fields, or 6 with seconds last (croniter's convention).
Ticks are computed in the zone (so ``0 9 * * *`` stays 09:00 local across
DST changes) and compared as aware datetimes.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from soulbox.core.errors import InvalidRequest
from soulbox.core.triggerspecs import CronConfig


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"unknown time zone {name!r}: use an IANA name like Europe/Paris") from None


def validate(config: CronConfig) -> None:
    """Raise ``InvalidRequest`` unless the expression and zone are usable."""
    zone(config.timezone)
    if len(config.expression.split()) not in (5, 6) or not croniter.is_valid(config.expression):
        raise InvalidRequest(f"invalid cron expression {config.expression!r}: 5 fields, or 6 with seconds last")


def next_tick(config: CronConfig, after: datetime) -> datetime:
    """The first tick strictly after ``after``."""
    it = croniter(config.expression, after.astimezone(zone(config.timezone)))
    tick: datetime = it.get_next(datetime)
    return tick


def last_tick(config: CronConfig, at_or_before: datetime) -> datetime:
    """The latest tick at or before ``at_or_before``."""
    local = at_or_before.astimezone(zone(config.timezone))
    it = croniter(config.expression, local)
    if croniter.match(config.expression, local) and local.microsecond == 0:
        return local
    tick: datetime = it.get_prev(datetime)
    return tick
