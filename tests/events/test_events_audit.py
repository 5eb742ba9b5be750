"""The audit log: events through the real consumer loop, API calls, paging."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import AuditRecord, EventType
from soulbox.events import AuditRecorder, new_record_id, read_audit, record_api_call

from .helpers import AT, Spy, consuming, event, eventually, life, publish, settled


async def test_events_become_audit_records_in_order(js: JetStreamContext, buckets: Buckets) -> None:
    acme = life("inv-1") + life("inv-2", EventType.TIMED_OUT)
    other = life("inv-3", tenant="other")
    await publish(js, [*acme[:2], *other[:2], *acme[2:], *other[2:]])
    async with consuming(js, AuditRecorder(js), "audit"):
        await eventually(lambda: settled(js, "audit"))

    records, next_seq = await read_audit(js, "acme")
    assert [r.id for _, r in records] == [e.id for e in acme]
    assert all(r.kind == "event" and r.tenant == "acme" for _, r in records)
    seqs = [seq for seq, _ in records]
    assert seqs == sorted(seqs) and next_seq == seqs[-1]

    first = records[-1][1]  # inv-2 timed out
    assert first.action == "invocation.timed_out"
    assert first.result == "timeout"
    assert first.resource == "functions/resize/invocations/inv-2"
    assert first.at == AT
    assert first.detail["duration_ms"] == 12.3 and first.detail["memory_limit_mb"] == 128

    theirs, _ = await read_audit(js, "other")
    assert [r.id for _, r in theirs] == [e.id for e in other]  # tenants are isolated


async def test_paging_returns_promptly_when_short(js: JetStreamContext, buckets: Buckets) -> None:
    events = life("inv-1") + life("inv-2")
    await AuditRecorder(js).record(events)
    pages: list[list[str]] = []
    cursor = 0
    while True:
        started = time.monotonic()
        page, cursor = await read_audit(js, "acme", after_seq=cursor, limit=3)
        assert time.monotonic() - started < 1.0
        if not page:
            break
        pages.append([r.id for _, r in page])
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [i for p in pages for i in p] == [e.id for e in events]
    again, same = await read_audit(js, "acme", after_seq=cursor, limit=3)
    assert (again, same) == ([], cursor)
    nothing, zero = await read_audit(js, "nobody")
    assert (nothing, zero) == ([], 0)
    assert await js.consumers_info(names.AUDIT_STREAM) == []  # readers clean up after themselves


async def test_redelivery_does_not_duplicate_records(js: JetStreamContext, buckets: Buckets) -> None:
    done = event(EventType.COMPLETED, "inv-1")
    await publish(js, [done])
    await publish(js, [done], msg_id_suffix=".again")  # redelivered, under another stream msg id
    spy = Spy(AuditRecorder(js), fail=1)  # and the first batch fails after publishing
    async with consuming(js, spy, "audit"):
        await eventually(lambda: settled(js, "audit"))
    assert len(spy.events) >= 3
    records, _ = await read_audit(js, "acme")
    assert [r.id for _, r in records] == [done.id]


async def test_api_calls_are_recorded_per_tenant(js: JetStreamContext, buckets: Buckets) -> None:
    call = AuditRecord(
        id=new_record_id(),
        kind="api",
        tenant="acme",
        actor="key-1",
        action="PUT /v1/functions/resize",
        resource="functions/resize",
        result="201",
        source="127.0.0.1",
        detail={"bytes": 1234},
    )
    anonymous = AuditRecord(id=new_record_id(), kind="api", action="GET /v1/functions", result="401")
    spoofed = AuditRecord(id=new_record_id(), kind="api", tenant="acme.>", action="GET /", result="400")
    acks = await asyncio.gather(
        *[await record_api_call(js, r) for r in (call, anonymous, spoofed)],
        await record_api_call(js, call),  # the same call twice is stored once
    )
    assert {ack.stream for ack in acks} == {names.AUDIT_STREAM}
    assert acks[-1].duplicate

    mine, _ = await read_audit(js, "acme")
    assert [r for _, r in mine] == [call]
    unattributed, _ = await read_audit(js, "_")
    assert [r for _, r in unattributed] == [anonymous, spoofed]


async def test_read_audit_rejects_bad_arguments(js: JetStreamContext, buckets: Buckets) -> None:
    for tenant in ("*", "acme.>", ">", "Acme"):
        with pytest.raises(InvalidRequest):
            await read_audit(js, tenant)
    with pytest.raises(InvalidRequest):
        await read_audit(js, "acme", limit=0)
    with pytest.raises(InvalidRequest):
        await read_audit(js, "acme", after_seq=-1)
