"""Cron tick arithmetic in IANA time zones, and the compare-and-set claim of a tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from soulbox.core.bus import Buckets
from soulbox.core.errors import InvalidRequest
from soulbox.core.triggerspecs import CronConfig
from soulbox.triggers import cron
from soulbox.triggers.service import claim_tick


def test_next_tick_is_local_time_across_dst() -> None:
    daily = CronConfig(expression="0 9 * * *", timezone="Europe/Paris")
    # 2026-03-29: Paris goes from UTC+1 to UTC+2; 09:00 local is 08:00 UTC before, 07:00 UTC after.
    before = cron.next_tick(daily, datetime(2026, 3, 28, 12, tzinfo=UTC))
    after = cron.next_tick(daily, before)
    assert before.astimezone(UTC) == datetime(2026, 3, 29, 7, tzinfo=UTC)
    assert after.astimezone(UTC) == datetime(2026, 3, 30, 7, tzinfo=UTC)
    assert (before.hour, after.hour) == (9, 9)


def test_seconds_field_and_last_tick() -> None:
    every_5s = CronConfig(expression="* * * * * */5")
    at = datetime(2026, 1, 1, 0, 0, 7, 500_000, tzinfo=UTC)
    assert cron.next_tick(every_5s, at) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert cron.last_tick(every_5s, at) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    exact = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert cron.last_tick(every_5s, exact) == exact


@pytest.mark.parametrize(
    ("expression", "timezone"),
    [("61 * * * *", "UTC"), ("* * *", "UTC"), ("* * * * *", "Mars/Olympus"), ("* * * * * * * *", "UTC")],
)
def test_invalid(expression: str, timezone: str) -> None:
    with pytest.raises(InvalidRequest):
        cron.validate(CronConfig(expression=expression, timezone=timezone))


async def test_each_tick_is_claimed_once(buckets: Buckets) -> None:
    tick = datetime(2026, 1, 1, tzinfo=UTC)
    assert await claim_tick(buckets.cron, "default.t", tick)
    assert not await claim_tick(buckets.cron, "default.t", tick)
    assert not await claim_tick(buckets.cron, "default.t", tick - timedelta(seconds=1))  # never backwards
    later = [tick + timedelta(seconds=1)] * 8
    import asyncio

    won = await asyncio.gather(*(claim_tick(buckets.cron, "default.t", t) for t in later))
    assert sum(won) == 1
