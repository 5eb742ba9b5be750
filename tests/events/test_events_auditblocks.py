"""The audit log stored in blocks (one message per tenant and append), against a real nats-server."""

from __future__ import annotations

import hashlib
import json

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.ledger import AuditRecord
from soulbox.core.settings import Settings
from soulbox.events import AuditLog, AuditRecorder, ExportStore, TenantKeys, read_audit, verify_log
from soulbox.events.auditblocks import MAX_BLOCK_RECORDS, pack, place, position, records_of
from soulbox.events.auditexport import export_segment, load_segments, verify_segments
from soulbox.events.auditlog import _record_count
from soulbox.events.chain import Verifier
from soulbox.events.streamread import read_stream

from .helpers import audit_records, life
from .test_events_audit import api_call


async def messages(js: JetStreamContext, stream: str = names.AUDIT_STREAM) -> list[tuple[int, str, list[AuditRecord]]]:
    return [(m.metadata.sequence.stream, m.subject, records_of(m.data)) async for m in read_stream(js, stream)]


async def test_an_append_is_one_block_per_tenant_linked_record_by_record(
    js: JetStreamContext, buckets: Buckets, audit_log: AuditLog
) -> None:
    acme, other = life("inv-1") + life("inv-2"), life("inv-3", tenant="other")
    await AuditRecorder(audit_log).record([*acme[:3], *other, *acme[3:]])
    stored = await messages(js)
    keys = TenantKeys(buckets.tenant_keys)
    assert [(subject, len(records)) for _, subject, records in stored] == [
        (f"sb.audit.{await keys.lookup('acme')}.event", 8),
        (f"sb.audit.{await keys.lookup('other')}.event", 4),
    ]
    records = [record for _, _, block in stored for record in block]
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]  # linked across blocks too
    verdict = await verify_log(js)
    assert verdict.ok and verdict.records == 12 and (verdict.first_seq, verdict.last_seq) == (1, 2)
    mine, _ = await read_audit(js, keys, "acme")
    assert [r.id for _, r in mine] == [e.id for e in acme]
    assert [place(at) for at, _ in mine] == [(1, i) for i in range(8)]


async def test_blocks_are_bounded(js: JetStreamContext, audit_log: AuditLog) -> None:
    await audit_log.append([api_call(action=f"call {i}") for i in range(MAX_BLOCK_RECORDS + 3)])
    assert [len(records) for _, _, records in await messages(js)] == [MAX_BLOCK_RECORDS, 3]
    assert (await verify_log(js)).records == MAX_BLOCK_RECORDS + 3


async def test_a_log_of_single_records_continues_in_blocks(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    before = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), block_records=1)  # as written before blocks
    await before.load()
    await before.append([api_call(action=f"old {i}") for i in range(3)])
    await before.close()
    after = AuditLog(nc, js, TenantKeys(buckets.tenant_keys))
    assert (await after.load()).seq == 3
    await after.append([api_call(action=f"new {i}") for i in range(5)])
    await after.append([api_call(action="alone")])  # a lone record is stored as a single record
    await after.close()
    stored = await messages(js)
    assert [len(records) for _, _, records in stored] == [1, 1, 1, 5, 1]
    single = await js.get_msg(names.AUDIT_STREAM, 5)
    assert isinstance(msgpack.unpackb(single.data, timestamp=3), dict)
    verdict = await verify_log(js)
    assert verdict.ok and verdict.records == 9


async def test_a_restarted_writer_remembers_the_origins_inside_blocks(
    nc: NATS, js: JetStreamContext, buckets: Buckets, audit_log: AuditLog
) -> None:
    events = life("inv-1") + life("inv-2")
    await AuditRecorder(audit_log).record(events)
    fresh = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), remembered=5)  # the last 5 records, in a block
    await fresh.load()
    await AuditRecorder(fresh).record(events[3:])  # redelivered after a crash
    await fresh.close()
    assert len(await audit_records(js)) == 8


async def test_verify_names_the_record_edited_or_removed_inside_a_block(
    js: JetStreamContext, audit_log: AuditLog
) -> None:
    await audit_log.append([api_call(action=f"call {i}") for i in range(6)])
    [(seq, _, records)] = await messages(js)

    def problem(block: list[AuditRecord]) -> tuple[int, int, str]:
        verifier = Verifier()
        for index, record in enumerate(block):
            if not verifier.feed(seq, record, index):
                break
        assert verifier.problem is not None
        return verifier.problem.seq, verifier.problem.index, verifier.problem.reason

    edited = [*records[:3], records[3].model_copy(update={"result": "500"}), *records[4:]]
    assert problem(edited)[:2] == (seq, 3) and "edited" in problem(edited)[2]
    removed = [*records[:2], *records[3:]]
    assert problem(removed)[:2] == (seq, 2) and "removed" in problem(removed)[2]


async def test_a_replaced_block_is_found(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    await js.add_stream(api.StreamConfig(name="TAMPER", subjects=["tamper.>"], duplicate_window=60))
    log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), stream="TAMPER", subject_prefix="tamper")
    await log.load()
    await log.append([api_call(action=f"first {i}") for i in range(4)])
    await log.append([api_call(action=f"second {i}") for i in range(4)])
    await log.close()
    [_, (_, subject, second)] = await messages(js, "TAMPER")
    await js.delete_msg("TAMPER", 2)
    bodies = [r.model_dump(mode="python") for r in second]
    bodies[1]["result"] = "500"
    rewritten = pack([msgpack.packb(body, datetime=True) for body in bodies])
    await js.publish(subject, rewritten)  # the "rewritten" block lands at the end
    verdict = await verify_log(js, stream="TAMPER")
    assert verdict.problem is not None and verdict.problem.seq == 3 and "missing" in verdict.problem.reason


async def test_paging_resumes_inside_a_block(js: JetStreamContext, buckets: Buckets, audit_log: AuditLog) -> None:
    calls = [api_call(action=f"call {i}") for i in range(10)]
    await audit_log.append(calls[:5])
    await audit_log.append(calls[5:])
    keys = TenantKeys(buckets.tenant_keys)
    pages, cursor = [], 0
    while True:
        page, cursor = await read_audit(js, keys, "acme", after_seq=cursor, limit=3)
        if not page:
            break
        pages.append([r.action for _, r in page])
        assert cursor == page[-1][0]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [a for p in pages for a in p] == [c.action for c in calls]
    after_fourth, _ = await read_audit(js, keys, "acme", after_seq=position(1, 3), limit=100)
    assert [r.action for _, r in after_fourth] == [c.action for c in calls[4:]]


async def test_segments_of_blocks_export_whole_messages_and_verify(
    js: JetStreamContext, buckets: Buckets, audit_log: AuditLog, s3_settings: Settings
) -> None:
    store = ExportStore(s3_settings.s3)
    await audit_log.append([api_call(action=f"call {i}") for i in range(6)])
    await audit_log.append([api_call(action=f"more {i}") for i in range(6)])
    first = await export_segment(js, buckets.audit_state, store, max_records=4, max_age_s=3600)
    assert first is not None and (first.first_seq, first.last_seq, first.records) == (1, 1, 6)
    second = await export_segment(js, buckets.audit_state, store, max_records=4, max_age_s=3600)
    assert second is not None and (second.first_seq, second.last_seq, second.records) == (2, 2, 6)
    segments = await load_segments(store)
    verdict = verify_segments(segments)
    assert verdict.ok and verdict.records == 12
    lines = segments[1][1]
    assert [json.loads(line)["index"] for line in lines.splitlines()] == list(range(6))
    tampered = lines.replace(b'"more 2"', b'"more 9"')
    forged = json.loads(segments[1][0])
    forged["sha256"] = hashlib.sha256(tampered).hexdigest()
    bad = verify_segments([segments[0], (json.dumps(forged).encode(), tampered)])
    assert bad.problem is not None and (bad.problem.seq, bad.problem.index) == (2, 2)


@given(st.integers(0, 70_000))
def test_record_count_reads_the_header(count: int) -> None:
    assert _record_count(msgpack.packb([{}] * count)) == count
    assert _record_count(msgpack.packb({"id": "x"})) == 1
