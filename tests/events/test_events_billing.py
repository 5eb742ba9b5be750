"""Billing through the real consumer loop, and the usage report."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.errors import InvalidRequest
from soulbox.core.ledger import UsageEntry
from soulbox.core.schemas import EventType, LifecycleEvent, Outcome, Tier
from soulbox.core.settings import PriceList, Settings
from soulbox.core.store import get_model, scan
from soulbox.events import BillingRecorder, ExportStore, export_usage, parse_period, usage

from .helpers import AT, Spy, consuming, event, eventually, life, publish, settled

PRICES = PriceList(per_gb_second=0.0000166667, per_invocation=0.0, per_egress_gb=0.0)
PRICE = PRICES.per_gb_second


def billing(nc: NATS, settings: Settings) -> BillingRecorder:
    return BillingRecorder(nc, default_memory_mb=settings.functions.memory_mb)


async def entries(buckets: Buckets, tenant: str = "acme") -> dict[str, UsageEntry]:
    return {key: entry async for key, entry in scan(buckets.billing, f"{tenant}.>", UsageEntry)}


async def test_terminal_events_are_billed(nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings) -> None:
    await publish(
        js,
        life("inv-1", duration_ms=12.3, memory_limit_mb=128)
        + life("inv-2", EventType.FAILED, duration_ms=0.2, memory_limit_mb=None)
        + life("inv-3", EventType.TIMED_OUT, duration_ms=1000.0, memory_limit_mb=2048, function="thumb"),
    )
    async with consuming(js, billing(nc, settings)):
        await eventually(lambda: settled(js))
    stored = await entries(buckets)
    assert sorted(stored) == ["acme.resize.inv-1", "acme.resize.inv-2", "acme.thumb.inv-3"]  # terminal only

    first = stored["acme.resize.inv-1"]
    assert (first.billable_ms, first.memory_mb) == (13, 128)
    assert first.gb_seconds == pytest.approx(128 / 1024 * 13 / 1000)
    assert (first.tenant, first.function, first.tier, first.outcome, first.at) == (
        "acme",
        "resize",
        Tier.WASM,
        Outcome.SUCCESS,
        AT,
    )
    second = stored["acme.resize.inv-2"]
    assert (second.billable_ms, second.memory_mb) == (1, settings.functions.memory_mb)  # at least 1 ms
    assert second.outcome is Outcome.FUNCTION_ERROR
    third = stored["acme.thumb.inv-3"]
    assert (third.billable_ms, third.memory_mb, third.outcome) == (1000, 2048, Outcome.TIMEOUT)
    assert third.gb_seconds == pytest.approx(2.0)


async def test_redelivered_event_bills_once(
    nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings
) -> None:
    done = event(EventType.COMPLETED, "inv-1", duration_ms=100.0, memory_limit_mb=1024)
    await publish(js, [done])
    await publish(js, [done], msg_id_suffix=".again")  # simulated redelivery: not de-duplicated
    spy = Spy(billing(nc, settings))
    async with consuming(js, spy):
        await eventually(lambda: settled(js))
    assert spy.events == [done, done]
    assert list(await entries(buckets)) == ["acme.resize.inv-1"]
    report = await usage(buckets.billing, "acme", prices=PRICES)
    assert report.total.invocations == 1
    assert report.total.billable_ms == 100
    assert report.total.gb_seconds == pytest.approx(0.1)


async def test_nakked_batch_is_redelivered_and_billed_once(
    nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings
) -> None:
    events = life("inv-1", duration_ms=5.5) + life("inv-2", duration_ms=7.0)
    await publish(js, events)
    spy = Spy(billing(nc, settings), fail=1)  # the first batch is written, then the recorder fails

    async def redelivered_and_settled() -> bool:
        # A nak'd batch waits out its delay before it comes back: settled alone may be seen before that.
        failed = len(spy.batches[0]) if spy.batches else len(events)
        return len(spy.events) >= len(events) + failed and await settled(js)

    async with consuming(js, spy, retry_delay=0.2):
        await eventually(redelivered_and_settled)
    failed = spy.batches[0]
    assert sorted(spy.events, key=lambda e: e.id) == sorted(
        events + failed, key=lambda e: e.id
    )  # the failed batch twice
    stored = await entries(buckets)
    assert sorted(stored) == ["acme.resize.inv-1", "acme.resize.inv-2"]
    assert [stored[k].billable_ms for k in sorted(stored)] == [6, 7]
    history = await buckets.billing.history("acme.resize.inv-1")
    assert len({entry.value for entry in history}) == 1  # a rewrite with identical content


async def test_usage_aggregates_per_function_and_time_bucket(
    nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings
) -> None:
    day1 = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
    day2 = datetime(2025, 3, 2, 23, 59, 59, tzinfo=UTC)
    recorder = billing(nc, settings)
    await recorder.record(
        [
            event(EventType.COMPLETED, "a1", function="resize", at=day1, duration_ms=1000, memory_limit_mb=1024),
            event(EventType.FAILED, "a2", function="resize", at=day1 + timedelta(minutes=50), duration_ms=500),
            event(EventType.COMPLETED, "a3", function="thumb", at=day2, duration_ms=2000, memory_limit_mb=512),
            event(EventType.STARTED, "a4", function="thumb", at=day2),  # not terminal: not billed
            event(EventType.COMPLETED, "b1", tenant="other", at=day1, duration_ms=9999),
        ]
    )
    resize_gbs = 1024 / 1024 * 1.0 + 128 / 1024 * 0.5
    thumb_gbs = 512 / 1024 * 2.0

    report = await usage(buckets.billing, "acme", prices=PRICES)
    assert report.total.invocations == 3
    assert report.total.billable_ms == 3500
    assert report.total.gb_seconds == pytest.approx(resize_gbs + thumb_gbs)
    assert report.total.cost == pytest.approx((resize_gbs + thumb_gbs) * PRICE)
    assert [(f.function, f.invocations, f.billable_ms) for f in report.functions] == [
        ("resize", 2, 1500),
        ("thumb", 1, 2000),
    ]
    assert report.functions[0].gb_seconds == pytest.approx(resize_gbs)
    assert [(b.start, b.invocations) for b in report.buckets] == [
        (datetime(2025, 3, 1, tzinfo=UTC), 2),
        (datetime(2025, 3, 2, tzinfo=UTC), 1),
    ]
    assert [f.function for f in report.buckets[1].functions] == ["thumb"]

    hourly = await usage(buckets.billing, "acme", prices=PRICES, granularity="hour")
    assert [(b.start, b.billable_ms) for b in hourly.buckets] == [
        (datetime(2025, 3, 1, 10, tzinfo=UTC), 1000),
        (datetime(2025, 3, 1, 11, tzinfo=UTC), 500),
        (datetime(2025, 3, 2, 23, tzinfo=UTC), 2000),
    ]

    window = await usage(
        buckets.billing,
        "acme",
        prices=PRICES,
        since=datetime(2025, 3, 1, 11, tzinfo=UTC),
        until=day2,  # exclusive
        granularity=None,
    )
    assert (window.total.invocations, window.total.billable_ms, window.buckets) == (1, 500, [])

    one = await usage(buckets.billing, "acme", prices=PRICES, function="thumb")
    assert (one.total.invocations, [f.function for f in one.functions]) == (1, ["thumb"])

    other = await usage(buckets.billing, "other", prices=PRICES)
    assert (other.total.invocations, other.total.billable_ms) == (1, 9999)

    empty = await usage(buckets.billing, "nobody", prices=PRICES)
    assert (empty.total.invocations, empty.functions, empty.buckets) == (0, [], [])

    as_json = report.model_dump(mode="json")
    assert as_json["buckets"][0]["start"] == "2025-03-01T00:00:00Z"
    assert as_json["total"]["invocations"] == 3


async def test_usage_rejects_names_that_are_not_names(buckets: Buckets) -> None:
    with pytest.raises(InvalidRequest):
        await usage(buckets.billing, "acme.>", prices=PRICES)
    with pytest.raises(InvalidRequest):
        await usage(buckets.billing, "acme", function="*", prices=PRICES)


async def test_entry_is_stored_under_the_billing_key(
    nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings
) -> None:
    await billing(nc, settings).record([event(EventType.COMPLETED, "inv-9", tenant="t1", function="f1")])
    key = names.billing_key("t1", "f1", "inv-9")
    entry = await get_model(buckets.billing, key, UsageEntry)
    assert entry is not None and entry.invocation_id == "inv-9"


async def test_sandbox_seconds_cpu_and_egress_are_metered_and_priced(
    nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings
) -> None:
    paused = LifecycleEvent(
        v=2,
        id="sb-1.paused.1",
        type=EventType.SANDBOX_PAUSED,
        tenant="acme",
        function="base",
        sandbox_id="sb-1",
        at=AT,
        seconds=30.0,
        egress_bytes=2_000_000_000,
    )
    killed = paused.model_copy(update={"id": "sb-1.killed.2", "type": EventType.SANDBOX_KILLED, "seconds": 12.5})
    created = paused.model_copy(update={"id": "sb-1.created.0", "type": EventType.SANDBOX_CREATED, "seconds": None})
    done = event(EventType.COMPLETED, "inv-1", duration_ms=1000, memory_limit_mb=1024).model_copy(
        update={"cpu_ms": 250.0, "egress_bytes": 1_000_000_000}
    )
    await publish(js, [created, paused, killed, done])
    await publish(js, [paused], msg_id_suffix=".again")
    async with consuming(js, billing(nc, settings)):
        await eventually(lambda: settled(js))
    prices = PriceList(
        per_gb_second=2.0, per_invocation=0.5, per_sandbox_second=0.1, per_cpu_second=4.0, per_egress_gb=3.0
    )
    report = await usage(buckets.billing, "acme", prices=prices)
    total = report.total
    assert (total.invocations, total.sandbox_seconds, total.egress_bytes) == (1, 42.5, 5_000_000_000)
    assert total.cpu_seconds == pytest.approx(0.25) and total.gb_seconds == pytest.approx(1.0)
    assert total.cost == pytest.approx(0.5 + 2.0 * 1.0 + 4.0 * 0.25 + 0.1 * 42.5 + 3.0 * 5.0)
    assert [f.function for f in report.functions] == ["base", "resize"]


async def test_usage_export_writes_csv_and_json(
    nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings, s3_settings: Settings
) -> None:
    recorder = billing(nc, settings)
    await recorder.record(
        [
            event(EventType.COMPLETED, "a1", at=datetime(2025, 3, 1, 10, 5, tzinfo=UTC), duration_ms=1000),
            event(EventType.COMPLETED, "a2", function="thumb", at=datetime(2025, 3, 1, 11, 0, tzinfo=UTC)),
            event(EventType.COMPLETED, "b1", tenant="other", at=datetime(2025, 3, 1, 23, 59, tzinfo=UTC)),
            event(EventType.COMPLETED, "c1", at=datetime(2025, 3, 2, 0, 0, tzinfo=UTC)),  # the next day
        ]
    )
    store = ExportStore(s3_settings.s3)
    start, end = parse_period("2025-03-01")
    json_key, csv_key = await export_usage(
        buckets.billing, store, start=start, end=end, label="2025-03-01", prices=PRICES, granularity="hour"
    )
    assert (json_key, csv_key) == ("soulbox/usage/2025-03-01.json", "soulbox/usage/2025-03-01.csv")
    document = json.loads(await store.get("usage/2025-03-01.json"))
    assert [r["tenant"] for r in document["reports"]] == ["acme", "other"]
    assert document["reports"][0]["total"]["invocations"] == 2
    rows = list(csv.DictReader(io.StringIO((await store.get("usage/2025-03-01.csv")).decode())))
    assert [(r["tenant"], r["bucket_start"], r["function"], r["invocations"]) for r in rows] == [
        ("acme", "2025-03-01T10:00:00+00:00", "resize", "1"),
        ("acme", "2025-03-01T11:00:00+00:00", "thumb", "1"),
        ("other", "2025-03-01T23:00:00+00:00", "resize", "1"),
    ]
    assert float(rows[0]["gb_seconds"]) == pytest.approx(0.125)
    assert parse_period("2025-02")[1] == datetime(2025, 3, 1, tzinfo=UTC)
    with pytest.raises(InvalidRequest):
        parse_period("March")
