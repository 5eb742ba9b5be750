"""The chained audit log: events and API calls, two writers, tampering, export, retention."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from asyncio.subprocess import PIPE
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.errors import InvalidRequest
from soulbox.core.ledger import AuditRecord
from soulbox.core.natsserver import NatsServer
from soulbox.core.schemas import EventType, InvocationError
from soulbox.core.settings import AuditSettings, Settings
from soulbox.events import (
    GENESIS,
    AuditLog,
    AuditRecorder,
    ExportStore,
    IntakeRecorder,
    TenantKeys,
    apply_retention,
    event_record,
    export_segment,
    load_segments,
    new_record_id,
    read_audit,
    record_api_call,
    record_hash,
    run,
    verify_log,
    verify_segments,
)
from soulbox.events.audit import event_fields
from soulbox.events.auditblocks import place
from soulbox.events.auditexport import Manifest, anchor_for
from soulbox.events.chain import FORM, verify
from soulbox.events.consumer import EventConsumer

from .helpers import audit_records, consuming, event, eventually, life, process_settings, publish, settled


def api_call(tenant: str | None = "acme", action: str = "GET /v1/functions") -> AuditRecord:
    return AuditRecord(id=new_record_id(), kind="api", tenant=tenant, action=action, result="200", source="10.0.0.1")


async def chain(js: JetStreamContext, stream: str = names.AUDIT_STREAM) -> list[tuple[int, AuditRecord]]:
    return await audit_records(js, stream)


async def test_events_and_api_calls_form_one_chain(
    nc: NATS, js: JetStreamContext, buckets: Buckets, audit_log: AuditLog
) -> None:
    acme = life("inv-1") + life("inv-2", EventType.TIMED_OUT)
    other = life("inv-3", tenant="other")
    await publish(js, [*acme[:2], *other, *acme[2:]])
    call = api_call()
    await (await record_api_call(js, call))
    await (await record_api_call(js, call))  # the same call twice is kept once
    intake = EventConsumer(
        nc, IntakeRecorder(audit_log), durable="audit", batch=64, model=AuditRecord, stream=names.AUDIT_INTAKE_STREAM
    )
    async with consuming(js, AuditRecorder(audit_log)):
        await eventually(lambda: settled(js))
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    await eventually(lambda: _chained(js, 13))
    stop.set()
    await task

    records = await chain(js)
    assert [r.prev_hash for _, r in records] == [GENESIS] + [r.hash for _, r in records[:-1]]
    assert all(record_hash(r) == r.hash for _, r in records)
    assert (await verify_log(js)).ok

    keys = TenantKeys(buckets.tenant_keys)
    mine, _ = await read_audit(js, keys, "acme")
    assert [r.id for _, r in mine] == [e.id for e in acme] + [call.id]
    pseudonym = await keys.lookup("acme")
    assert pseudonym and pseudonym.startswith("p") and all(r.tenant == pseudonym for _, r in mine)
    assert all("acme" not in json.dumps(r.model_dump(mode="json")) for _, r in mine)  # no name in the chain
    theirs, _ = await read_audit(js, keys, "other")
    assert [r.id for _, r in theirs] == [e.id for e in other]
    nobody, cursor = await read_audit(js, keys, "nobody")
    assert (nobody, cursor) == ([], 0)


async def test_api_calls_made_together_share_an_intake_message_and_are_each_chained_once(
    nc: NATS, js: JetStreamContext, buckets: Buckets, audit_log: AuditLog
) -> None:
    calls = [api_call(action=f"call {i}") for i in range(5)]
    await asyncio.gather(*[await record_api_call(js, call) for call in calls])  # one turn: one batch
    await (await record_api_call(js, calls[0]))  # a retry, alone: the batch's id does not cover it
    [first, second] = [await js.get_msg(names.AUDIT_INTAKE_STREAM, seq) for seq in (1, 2)]
    assert isinstance(msgpack.unpackb(first.data, timestamp=3), list)
    assert (second.headers or {}).get("Nats-Msg-Id") == f"api.{calls[0].id}"
    intake = EventConsumer(
        nc, IntakeRecorder(audit_log), durable="audit", batch=64, model=AuditRecord, stream=names.AUDIT_INTAKE_STREAM
    )
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    await eventually(lambda: _chained(js, 5))
    stop.set()
    await task
    assert [r.action for _, r in await chain(js)] == [call.action for call in calls]


async def _chained(js: JetStreamContext, count: int) -> bool:
    return len(await chain(js)) >= count


async def test_redelivered_events_are_chained_once(
    js: JetStreamContext, buckets: Buckets, audit_log: AuditLog, nc: NATS
) -> None:
    events = life("inv-1")
    await AuditRecorder(audit_log).record(events)
    await AuditRecorder(audit_log).record(events + events)  # redelivered, twice in one batch
    fresh = AuditLog(nc, js, TenantKeys(buckets.tenant_keys))  # a restarted writer
    await fresh.load()
    assert await fresh.append([api_call()]) == 1
    assert await fresh.append([event_record(e) for e in events]) == 0
    await fresh.close()
    assert [r.id for _, r in await chain(js)][:4] == [e.id for e in events]
    assert len(await chain(js)) == 5
    assert (await js.stream_info(names.AUDIT_STREAM)).state.messages == 2  # the events' block, the call


async def _race(nc: NATS, js: JetStreamContext, buckets: Buckets, stream: str, prefix: str) -> None:
    """Two writers append to ``stream`` at once, sharing some records; one valid chain must result."""
    writers = [
        AuditLog(nc, js, TenantKeys(buckets.tenant_keys), stream=stream, subject_prefix=prefix) for _ in range(2)
    ]
    for w in writers:
        await w.load()
    batches = [[api_call(action=f"w{i} b{b} r{r}") for r in range(20)] for b in range(10) for i in range(2)]
    shared = [api_call(action="both") for _ in range(30)]  # both writers get these (a redelivery race)

    async def write(writer: AuditLog, mine: list[list[AuditRecord]]) -> None:
        for batch in mine:
            await writer.append(batch + shared[:5])
            await asyncio.sleep(0)

    await asyncio.gather(write(writers[0], batches[0::2]), write(writers[1], batches[1::2]))
    for w in writers:
        await w.close()
    records = await chain(js, stream)
    assert len(records) == 20 * 20 + 5  # every record once
    assert len({r.origin for _, r in records}) == len(records)
    verdict = await verify_log(js, stream=stream)
    assert verdict.ok and verdict.records == len(records)


async def test_a_writer_far_behind_continues_from_the_tail(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    """A writer whose head is older than what it remembers reloads the tail, not everything since."""
    keys = TenantKeys(buckets.tenant_keys)
    behind, busy = AuditLog(nc, js, keys, remembered=10, block_records=1), AuditLog(nc, js, keys, block_records=1)
    await behind.load()
    await busy.load()
    again = [api_call(action="both")]
    assert await busy.append([api_call(action=f"r{i}") for i in range(30)] + again) == 31
    assert await behind.append([*again, api_call(action="late")]) == 1  # the tail holds the shared one
    for writer in (behind, busy):
        await writer.close()
    assert behind.head.seq == 32
    verdict = await verify_log(js)
    assert verdict.ok and verdict.records == 32


async def test_two_writers_keep_one_valid_chain(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    assert (await js.stream_info(names.AUDIT_STREAM)).config.allow_atomic  # batches are atomic batches
    await _race(nc, js, buckets, names.AUDIT_STREAM, "sb.audit")


async def test_two_writers_keep_one_valid_chain_without_atomic_batches(
    nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    """A stream (or a server older than 2.12) without atomic batches: every message guarded on its own."""
    await js.add_stream(api.StreamConfig(name="PLAIN", subjects=["plain.>"], duplicate_window=60))
    await _race(nc, js, buckets, "PLAIN", "plain")


async def test_a_forgotten_duplicate_in_an_atomic_batch_is_dropped(
    nc: NATS, js: JetStreamContext, buckets: Buckets
) -> None:
    """A re-appended record the writer no longer remembers makes the server refuse the atomic batch;
    the writer then appends one by one, the server drops just the duplicate, and the chain stays whole."""
    calls = [api_call(action=f"call {i}") for i in range(4)]
    first = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), block_records=1)
    await first.load()
    assert await first.append(calls[:3]) == 3
    await first.close()
    forgetful = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), remembered=1, block_records=1)  # calls[2] only
    await forgetful.load()
    assert await forgetful.append([calls[0], calls[3]]) == 1
    assert await forgetful.append(calls[:2]) == 0  # remembered now
    await forgetful.close()
    assert [r.id for _, r in await chain(js)] == [c.id for c in calls]
    assert (await verify_log(js)).ok


async def test_chained_records_keep_every_field(js: JetStreamContext, audit_log: AuditLog) -> None:
    call = api_call().model_copy(
        update={"detail": {"n": 1.5, "i": 7, "s": "grüße ✓", "b": True, "none": None}, "actor": "key-1"}
    )
    await audit_log.append([call])
    [(_, stored)] = await chain(js)
    assert record_hash(stored) == stored.hash
    expected = call.model_dump(exclude={"tenant", "origin", "prev_hash", "hash", "v"})
    assert stored.model_dump(exclude={"tenant", "origin", "prev_hash", "hash", "v"}) == expected
    assert (stored.origin, stored.prev_hash, stored.v) == (f"api.{call.id}", GENESIS, FORM)


async def _tamper_stream(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    """A chain on a stream made without the deny flags, so a test can delete from it."""
    await js.add_stream(api.StreamConfig(name="TAMPER", subjects=["tamper.>"], duplicate_window=60))
    log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), stream="TAMPER", subject_prefix="tamper", block_records=1)
    await log.load()
    await log.append([api_call(action=f"call {i}") for i in range(6)])
    await log.close()


async def test_verify_names_the_record_after_a_deleted_one(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    await _tamper_stream(nc, js, buckets)
    assert (await verify_log(js, stream="TAMPER")).ok
    await js.delete_msg("TAMPER", 3)
    verdict = await verify_log(js, stream="TAMPER")
    assert not verdict.ok and verdict.problem is not None
    assert verdict.problem.seq == 4 and "missing" in verdict.problem.reason
    assert verdict.records == 2


async def test_verify_names_an_edited_record(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    await _tamper_stream(nc, js, buckets)
    records = [(place(at)[0], record) for at, record in await chain(js, "TAMPER")]  # a message per record
    # Rewrite record 2: delete it and publish an edited copy at the end (the only "rewrite" a stream allows).
    await js.delete_msg("TAMPER", 2)
    edited = records[1][1].model_copy(update={"result": "500"})
    await js.publish("tamper.x.api", encode(edited))
    verdict = await verify_log(js, stream="TAMPER")
    assert verdict.problem is not None and verdict.problem.seq == 3  # the gap is found first

    # Records in place, as an exported segment holds them: one edited, or two swapped.
    edited_in_place = list(records)
    edited_in_place[2] = (3, records[2][1].model_copy(update={"action": "GET /nothing-to-see"}))
    problem = verify(edited_in_place).problem
    assert problem is not None and problem.seq == 3 and "edited" in problem.reason
    swapped = [*records[:2], (3, records[3][1]), (4, records[2][1]), *records[4:]]
    problem = verify(swapped).problem
    assert problem is not None and problem.seq == 3 and "reordered" in problem.reason


async def test_segments_export_verify_offline_and_allow_retention(
    nc: NATS, js: JetStreamContext, buckets: Buckets, s3_settings: Settings
) -> None:
    """The log as written before blocks (a message per record): segments, verify, retention."""
    store = ExportStore(s3_settings.s3)
    audit_log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys), block_records=1)
    await audit_log.load()
    await audit_log.append([api_call(action=f"call {i}") for i in range(25)])
    assert await export_segment(js, buckets.audit_state, store, max_records=10, max_age_s=3600) is not None
    assert await export_segment(js, buckets.audit_state, store, max_records=10, max_age_s=3600) is not None
    assert await export_segment(js, buckets.audit_state, store, max_records=10, max_age_s=3600) is None  # 5: unsealed
    last = await export_segment(js, buckets.audit_state, store, max_records=10, max_age_s=3600, force=True)
    assert last is not None and (last.first_seq, last.last_seq, last.records) == (21, 25, 5)

    segments = await load_segments(store)
    assert len(segments) == 3
    verdict = verify_segments(segments)
    assert verdict.ok and (verdict.records, verdict.last_seq) == (25, 25)
    manifest = json.loads(segments[1][0])
    assert manifest["prev_hash"] == json.loads(segments[0][0])["last_hash"]

    # An edited line in an exported segment: the file no longer matches its manifest; with the
    # manifest's digest fixed up too, the chain itself names the record.
    tampered_lines = segments[1][1].replace(b'"call 13"', b'"call 99"')
    assert not verify_segments([segments[0], (segments[1][0], tampered_lines), segments[2]]).ok
    forged = json.loads(segments[1][0])
    forged["sha256"] = hashlib.sha256(tampered_lines).hexdigest()
    bad = verify_segments([segments[0], (json.dumps(forged).encode(), tampered_lines), segments[2]])
    assert bad.problem is not None and bad.problem.seq == 14 and "edited" in bad.problem.reason
    dropped = b"".join(line + b"\n" for i, line in enumerate(segments[1][1].splitlines()) if i != 4)
    forged["sha256"] = hashlib.sha256(dropped).hexdigest()
    gap = verify_segments([segments[0], (json.dumps(forged).encode(), dropped)])
    assert gap.problem is not None and gap.problem.seq == 16

    # Retention: everything is old enough, but only the exported records may go.
    await audit_log.append([api_call(action="after export")])
    purged = await apply_retention(js, buckets.audit_state, max_age_s=0.0)
    assert purged == 25
    info = await js.stream_info(names.AUDIT_STREAM)
    assert (info.state.first_seq, info.state.messages) == (26, 1)
    anchor = await anchor_for(store, js)
    assert anchor == last.last_hash
    assert (await verify_log(js, anchor=anchor)).ok
    assert not (await verify_log(js, anchor=GENESIS)).ok
    assert await apply_retention(js, buckets.audit_state, max_age_s=timedelta(days=1).total_seconds()) == 0
    await audit_log.close()


async def test_read_audit_rejects_bad_arguments(js: JetStreamContext, buckets: Buckets) -> None:
    keys = TenantKeys(buckets.tenant_keys)
    for tenant in ("*", "acme.>", ">", "Acme"):
        with pytest.raises(InvalidRequest):
            await read_audit(js, keys, tenant)
    with pytest.raises(InvalidRequest):
        await read_audit(js, keys, "acme", limit=0)
    with pytest.raises(InvalidRequest):
        await read_audit(js, keys, "acme", after_seq=-1)


async def test_paging_returns_promptly_when_short(js: JetStreamContext, buckets: Buckets, audit_log: AuditLog) -> None:
    events = life("inv-1") + life("inv-2")
    await AuditRecorder(audit_log).record(events)
    keys = TenantKeys(buckets.tenant_keys)
    pages: list[list[str]] = []
    cursor = 0
    while True:
        started = time.monotonic()
        page, cursor = await read_audit(js, keys, "acme", after_seq=cursor, limit=3)
        assert time.monotonic() - started < 1.0
        if not page:
            break
        pages.append([r.id for _, r in page])
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [i for p in pages for i in p] == [e.id for e in events]
    assert await js.consumers_info(names.AUDIT_STREAM) == []  # readers clean up after themselves


async def test_verify_audit_command_names_a_purged_prefix(
    nats_server: NatsServer, js: JetStreamContext, buckets: Buckets, audit_log: AuditLog, tmp_path: Path
) -> None:
    await audit_log.append([api_call(action=f"call {i}") for i in range(5)])
    env = {**os.environ, "SOULBOX_NATS__URLS": f'["{nats_server.url}"]', "SOULBOX_LOG_LEVEL": "error"}

    async def verify_command() -> tuple[int, dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "soulbox.events", "verify-audit", env=env, cwd=tmp_path, stdout=PIPE
        )
        out, _ = await process.communicate()
        return process.returncode or 0, json.loads(out)

    code, result = await verify_command()
    assert code == 0 and result["ok"] and result["stream"]["records"] == 5
    await js.purge_stream(names.AUDIT_STREAM, seq=3)  # records 1-2 dropped without being exported
    code, result = await verify_command()
    assert code == 1 and not result["ok"]
    assert result["stream"]["problem"]["seq"] == 3 and "no exported segment" in result["stream"]["problem"]["reason"]


async def test_the_audit_consumer_exports_segments_periodically(
    js: JetStreamContext, buckets: Buckets, s3_settings: Settings
) -> None:
    settings = s3_settings.model_copy(
        update={"audit": AuditSettings(segment_records=4, segment_seconds=3600, export_interval_s=0.2, max_age_s=0.001)}
    )
    await publish(js, life("inv-1") + life("inv-2") + life("inv-3"))
    stop = asyncio.Event()
    task = asyncio.create_task(run(process_settings(settings), stop))
    store = ExportStore(settings.s3)

    async def exported() -> bool:
        return sum(Manifest.model_validate_json(m).records for m, _ in await load_segments(store)) == 12

    async def dropped() -> bool:  # retention: every exported message purged
        return (await js.stream_info(names.AUDIT_STREAM)).state.messages == 0

    try:
        await eventually(exported, timeout=30)
        await eventually(dropped, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    segments = await load_segments(store)
    assert verify_segments(segments).ok
    await publish(js, life("inv-4"))  # a fresh writer continues the chain after the purge
    stop = asyncio.Event()
    task = asyncio.create_task(run(process_settings(settings.model_copy(update={"audit": AuditSettings()})), stop))
    await eventually(lambda: settled(js))
    stop.set()
    await asyncio.wait_for(task, 15)
    assert (await verify_log(js, anchor=await anchor_for(store, js))).ok


async def test_a_log_from_before_the_chain_is_continued(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    """Unchained records written by an older version stay as a legacy prefix; the chain starts after them."""
    for i in range(3):
        await js.publish("sb.audit.acme.api", encode(api_call(action=f"old {i}")), headers={"Nats-Msg-Id": f"old.{i}"})
    log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys))
    assert (await log.load()).seq == 3
    await log.append([api_call(action="new")])
    await log.close()
    verdict = await verify_log(js)
    assert verdict.ok and (verdict.legacy, verdict.records, verdict.first_prev_hash) == (3, 1, GENESIS)
    await js.publish("sb.audit.acme.api", encode(api_call(action="unchained, after the chain began")))
    problem = (await verify_log(js)).problem
    assert problem is not None and problem.seq == 5 and "not chained" in problem.reason


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    at=st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), st.timezones())),
    duration=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    message=st.text(),
    sandbox=st.booleans(),
)
def test_event_bodies_are_the_records_fields(
    at: datetime, duration: float | None, message: str, sandbox: bool
) -> None:
    """The fields the chain hashes, built without pydantic, are exactly the model's dump."""
    source = event(EventType.FAILED, "inv-1", at=at, duration_ms=duration).model_copy(
        update={
            "error": InvocationError(kind="trap", message=message),
            "sandbox_id": "sb-1" if sandbox else None,
            "seconds": 1.5 if sandbox else None,
            "cpu_ms": 7,
            "egress_bytes": 10,
        }
    )
    [fields] = event_fields([source])
    assert fields == event_record(source).model_dump(exclude={"hash"})
    # in sorted order, with every key the chain sets, so it can encode them without sorting
    assert list(fields) == sorted(fields) and list(fields["detail"]) == sorted(fields["detail"])
    assert {"prev_hash", "v", "tenant", "origin", "resource"} <= fields.keys()
