"""The chain's canonical forms: version 2 records hashed over msgpack, version 1 records over JSON."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import hypothesis
import hypothesis.strategies as st
import msgpack
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.ledger import AuditRecord
from soulbox.events import AuditLog, TenantKeys, verify_log
from soulbox.events.chain import FORM, GENESIS, canonical, fields_of, link, record_hash, seal

from .test_events_audit import api_call

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=40)
)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    at=st.datetimes(
        timezones=st.one_of(
            st.none(), st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)))
        )
    ),
    detail=st.dictionaries(st.text(max_size=12), _SCALARS, max_size=20),
    action=st.text(),
    prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_a_sealed_record_is_its_canonical_map_plus_its_hash(
    at: datetime, detail: dict[str, str | int | float | bool | None], action: str, prev: str
) -> None:
    record = AuditRecord(id="r-1", kind="api", at=at, action=action, detail=detail, tenant="t_x")
    [body] = fields_of([record])
    hash_, stored = seal(body | {"origin": "api.r-1"}, prev)
    fields = msgpack.unpackb(stored, timestamp=3)
    assert fields.pop("hash") == hash_
    at_utc = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    expected = record.model_dump(exclude={"hash"}) | {"at": at_utc, "origin": "api.r-1", "prev_hash": prev, "v": 2}
    assert fields == expected  # ``at`` as a msgpack timestamp: the same instant, in UTC
    # the hash covers the sorted map, and a reader's record (parsed from the stored form) verifies
    read = AuditRecord.model_validate(msgpack.unpackb(stored, timestamp=3))
    ordered = dict(sorted(fields.items())) | {"detail": dict(sorted(fields["detail"].items()))}
    packed = msgpack.packb(ordered, datetime=True)
    assert canonical(read) == packed and hash_ == hashlib.sha256(packed).hexdigest()
    assert (read.v, read.prev_hash) == (FORM, prev)
    assert record_hash(read) == hash_ == link(record, prev, {"origin": "api.r-1"}).hash


def test_a_map_of_sixteen_fields_and_more_keeps_its_hash_last() -> None:
    body = {f"k{i:02}": i for i in range(20)}
    hash_, stored = seal(dict(body), GENESIS)
    assert msgpack.unpackb(stored) == {**body, "prev_hash": GENESIS, "v": FORM, "hash": hash_}
    assert list(msgpack.unpackb(stored))[-1] == "hash"


def test_version_1_records_are_hashed_over_compact_sorted_json() -> None:
    record = api_call().model_copy(update={"v": 1, "prev_hash": GENESIS, "detail": {"b": "grüße", "a": 1.5}})
    expected = json.dumps(
        record.model_dump(mode="json", exclude={"hash"}), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert canonical(record) == expected
    assert record_hash(record) == hashlib.sha256(expected).hexdigest()


def _v1_chain(count: int) -> list[AuditRecord]:
    """Records as the writer linked them before version 2: JSON-hashed, one message each."""
    records, prev = [], GENESIS
    for i in range(count):
        unlinked = api_call(action=f"old {i}").model_copy(update={"v": 1, "prev_hash": prev, "origin": f"old.{i}"})
        prev = record_hash(unlinked)
        records.append(unlinked.model_copy(update={"hash": prev}))
    return records


async def test_a_version_1_chain_is_continued_in_version_2(nc: NATS, js: JetStreamContext, buckets: Buckets) -> None:
    old = _v1_chain(3)
    for record in old:
        await js.publish("sb.audit.acme.api", encode(record), headers={"Nats-Msg-Id": record.origin or ""})
    log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys))
    assert (await log.load()).hash == old[-1].hash
    await log.append([api_call(action=f"new {i}") for i in range(3)])
    await log.close()
    verdict = await verify_log(js)
    assert verdict.ok and (verdict.records, verdict.legacy, verdict.first_prev_hash) == (6, 0, GENESIS)


async def test_an_edited_version_1_record_is_named(js: JetStreamContext, buckets: Buckets) -> None:
    old = _v1_chain(3)
    old[1] = old[1].model_copy(update={"result": "500"})  # edited after it was hashed
    for record in old:
        await js.publish("sb.audit.acme.api", encode(record))
    problem = (await verify_log(js)).problem
    assert problem is not None and problem.seq == 2 and "edited" in problem.reason
