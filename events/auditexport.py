"""Sealed audit segments in the export store, verification, and retention.

A segment is the next run of records after the last exported one, sealed when
it holds ``segment_records`` records or its oldest record is
``segment_seconds`` old. It is written as

    audit/segments/<first seq>-<last seq>.jsonl          one record per line: {"seq": n, **record}
    audit/segments/<first seq>-<last seq>.manifest.json  Manifest: sequences, first/last hash, file sha256

and only then is the export state (``sb_audit_state``, compare-and-set, so two
audit consumers never both export a segment) advanced. Segments verify
offline: the manifest's ``prev_hash`` is the previous manifest's
``last_hash``, and the lines are a chain from it (``verify_segments``).

Retention purges the stream's oldest records, never past the last exported
one; what remains still verifies, anchored at the hash of the last purged
record (the matching manifest's ``last_hash``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from soulbox.core import names
from soulbox.core.codec import decode, encode
from soulbox.core.errors import SchemaError
from soulbox.core.ledger import AuditExportState, AuditRecord
from soulbox.core.logging import get_logger
from soulbox.core.schemas import utcnow

from .auditblocks import records_of
from .auditlog import EXPORT_STATE_KEY
from .chain import GENESIS, Verdict, Verifier
from .s3 import ExportStore
from .streamread import read_stream

log = get_logger(__name__)

STATE_KEY = EXPORT_STATE_KEY
SEGMENTS = "audit/segments/"


class Manifest(BaseModel):
    first_seq: int
    last_seq: int
    records: int
    prev_hash: str
    first_hash: str
    last_hash: str
    sha256: str
    exported_at: str


def segment_name(first_seq: int, last_seq: int) -> str:
    return f"{SEGMENTS}{first_seq:012d}-{last_seq:012d}"


async def read_state(kv: KeyValue) -> tuple[AuditExportState, int]:
    """The export state and its revision (0: nothing exported yet)."""
    try:
        entry = await kv.get(STATE_KEY)
    except KeyNotFoundError:
        return AuditExportState(), 0
    if not entry.value:
        return AuditExportState(), entry.revision or 0
    return decode(AuditExportState, entry.value), entry.revision or 0


async def export_segment(
    js: JetStreamContext,
    state_kv: KeyValue,
    store: ExportStore,
    *,
    max_records: int,
    max_age_s: float,
    force: bool = False,
    stream: str = names.AUDIT_STREAM,
) -> Manifest | None:
    """Export the next segment if one is sealed (or any records at all with ``force``)."""
    state, revision = await read_state(state_kv)
    info = await js.stream_info(stream)
    available = info.state.last_seq - state.last_seq
    if available <= 0:
        return None
    records: list[tuple[int, int, AuditRecord]] = []  # (message sequence, index in it, record)
    verifier = Verifier(expect_prev=state.last_hash)
    # Whole messages (retention purges by message), up to about max_records records.
    async for msg in read_stream(js, stream, start_seq=state.last_seq + 1, limit=max_records):
        seq = msg.metadata.sequence.stream
        try:
            block = records_of(msg.data)
        except SchemaError:
            verifier.fail(seq, "unreadable record")
            break
        if not verifier.feed_all(seq, block):
            break
        records += [(seq, index, record) for index, record in enumerate(block)]
        if len(records) >= max_records:
            break
    if verifier.problem is not None:
        raise SchemaError(f"audit record {verifier.problem.seq} does not verify: {verifier.problem.reason}")
    if not records:
        return None
    oldest_age = (utcnow() - records[0][2].at).total_seconds()
    if not force and len(records) < max_records and oldest_age < max_age_s:
        return None  # not sealed yet
    lines = b"".join(
        json.dumps({"seq": seq, "index": index, **record.model_dump(mode="json")}, sort_keys=True).encode() + b"\n"
        for seq, index, record in records
    )
    manifest = Manifest(
        first_seq=records[0][0],
        last_seq=records[-1][0],
        records=len(records),
        prev_hash=state.last_hash,
        first_hash=records[0][2].hash or "",
        last_hash=records[-1][2].hash or "",
        sha256=hashlib.sha256(lines).hexdigest(),
        exported_at=utcnow().isoformat(),
    )
    name = segment_name(manifest.first_seq, manifest.last_seq)
    await store.put(f"{name}.jsonl", lines, content_type="application/x-ndjson")
    await store.put(f"{name}.manifest.json", manifest.model_dump_json().encode(), content_type="application/json")
    new_state = AuditExportState(segments=state.segments + 1, last_seq=manifest.last_seq, last_hash=manifest.last_hash)
    try:
        if revision == 0:
            await state_kv.create(STATE_KEY, encode(new_state))
        else:
            await state_kv.update(STATE_KEY, encode(new_state), last=revision)
    except KeyWrongLastSequenceError:  # another exporter sealed the same records first: same content
        log.info("audit.export.lost_race", first_seq=manifest.first_seq)
        return None
    log.info("audit.export.segment", first_seq=manifest.first_seq, last_seq=manifest.last_seq)
    return manifest


def verify_segments(segments: list[tuple[bytes, bytes]]) -> Verdict:
    """Verify exported ``(manifest, jsonl)`` pairs, in order, from the start of the chain."""
    verifier = Verifier(expect_prev=GENESIS, contiguous=True)
    for manifest_bytes, lines in segments:
        manifest = Manifest.model_validate_json(manifest_bytes)
        if hashlib.sha256(lines).hexdigest() != manifest.sha256:
            verifier.fail(manifest.first_seq, "segment file does not match its manifest's sha256")
            break
        if verifier.last_hash is not None and manifest.prev_hash != verifier.last_hash:
            verifier.fail(manifest.first_seq, "manifest does not follow the previous segment")
            break
        for line in lines.splitlines():
            raw = json.loads(line)
            seq, index = int(raw.pop("seq")), int(raw.pop("index", 0))  # segments before blocks: no index
            if not verifier.feed(seq, AuditRecord.model_validate(raw), index):
                break
        if verifier.problem is not None:
            break
        if verifier.last_hash != manifest.last_hash or verifier.last_seq != manifest.last_seq:
            verifier.fail(manifest.last_seq, "segment does not end where its manifest says")
            break
    return verifier.verdict()


async def load_segments(store: ExportStore) -> list[tuple[bytes, bytes]]:
    """Every exported segment as ``(manifest, jsonl)``, in order."""
    manifests = [n for n in await store.list(SEGMENTS) if n.endswith(".manifest.json")]
    return [
        (await store.get(name), await store.get(name.removesuffix(".manifest.json") + ".jsonl")) for name in manifests
    ]


async def verify_log(
    js: JetStreamContext, *, stream: str = names.AUDIT_STREAM, anchor: str | None = GENESIS
) -> Verdict:
    """Verify the records on the stream, oldest first.

    When the oldest records are gone (exported, then dropped by retention)
    the first record must link to ``anchor``, the last exported hash before
    it (see ``anchor_for``); with no anchor, records removed without an
    exported segment are the first problem.
    """
    info = await js.stream_info(stream)
    verifier = Verifier(expect_prev=anchor if info.state.first_seq > 1 else GENESIS, legacy_prefix=True)
    if info.state.first_seq > 1 and anchor is None:
        verifier.fail(
            info.state.first_seq,
            f"records 1..{info.state.first_seq - 1} are gone and no exported segment ends at {info.state.first_seq - 1}",  # noqa: E501
        )
        return verifier.verdict()
    previous = info.state.first_seq - 1
    async for msg in read_stream(js, stream, start_seq=info.state.first_seq):
        seq = msg.metadata.sequence.stream
        if seq != previous + 1:
            verifier.fail(seq, f"sequence {seq} follows {previous} (records missing)")
            break
        previous = seq
        try:
            block = records_of(msg.data)
        except SchemaError:
            verifier.fail(seq, "unreadable record")
            break
        if not verifier.feed_all(seq, block):
            break
    if verifier.problem is None and info.state.last_seq > previous:
        verifier.fail(previous + 1, f"records {previous + 1}..{info.state.last_seq} are missing")
    return verifier.verdict()


async def anchor_for(store: ExportStore | None, js: JetStreamContext, stream: str = names.AUDIT_STREAM) -> str | None:
    """The hash the stream's first record must link to: GENESIS, else the last hash of the
    exported segment that ends right before it (None when there is none)."""
    info = await js.stream_info(stream)
    if info.state.first_seq <= 1:
        return GENESIS
    if store is None:
        return None
    for name in reversed(await store.list(SEGMENTS)):
        if name.endswith(".manifest.json"):
            manifest = Manifest.model_validate_json(await store.get(name))
            if manifest.last_seq == info.state.first_seq - 1:
                return manifest.last_hash
    return None


async def apply_retention(
    js: JetStreamContext, state_kv: KeyValue, *, max_age_s: float, stream: str = names.AUDIT_STREAM
) -> int:
    """Purge records older than ``max_age_s`` that are exported; how many were purged."""
    state, _ = await read_state(state_kv)
    info = await js.stream_info(stream)
    if state.last_seq < info.state.first_seq:
        return 0
    cutoff = utcnow() - timedelta(seconds=max_age_s)
    keep_from = info.state.first_seq
    async for msg in read_stream(js, stream, start_seq=info.state.first_seq, limit=state.last_seq - keep_from + 1):
        if records_of(msg.data)[-1].at >= cutoff:  # a block goes when its newest record is old enough
            break
        keep_from = msg.metadata.sequence.stream + 1
    if keep_from <= info.state.first_seq:
        return 0
    await js.purge_stream(stream, seq=keep_from)
    purged = keep_from - info.state.first_seq
    log.info("audit.retention.purged", records=purged, keep_from=keep_from)
    return purged
