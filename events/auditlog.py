"""The one writer of the chained audit log, safe when several run at once.

Every record is appended by ``AuditLog.append``: it takes the head it knows
(stream sequence, hash, origin of the last record), links the batch to it in
memory (:func:`.chain.seal`) and publishes it in one go. On a stream
that allows atomic batches (``SB_AUDIT`` does, nats-server 2.12+) the batch is
one JetStream atomic batch whose first message carries
``Nats-Expected-Last-Sequence = head sequence``: the server stores the whole
batch right after the head, or nothing, and answers once per batch. On any
other stream (or an older server) the batch is published pipelined, each
message guarded on its own:

    message k: Nats-Expected-Last-Sequence = head sequence + k - 1
    every one: Nats-Msg-Id                 = its own origin (evt.<id>, api.<id>)

So the server stores a message only if it lands right after the record it
was linked to. When another writer appended in between, the batch (or its
first message and so every later one, whose expected predecessor is not the
last message) is refused, nothing out of chain is ever stored; this writer
then reads what was appended since its head (verifying the links), and
retries what is left. The origin as message id also makes a re-appended
record (an event redelivered after a crash) a duplicate the server drops (an
atomic batch holding one is refused whole, and the batch is then retried
message by message, which drops just the duplicate); past the server's
de-duplication window the writer's memory of recent origins (loaded from the
tail of the log at start) catches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError, SoulboxError
from soulbox.core.ledger import AuditExportState, AuditRecord
from soulbox.core.logging import get_logger
from soulbox.core.schemas import NAME_RE

from .auditblocks import MAX_BLOCK_RECORDS, pack, records_of
from .chain import GENESIS, Verifier, fields_of, seal
from .metrics import RecentIds
from .pipeline import (
    ATOMIC_BATCH_MAX,
    BATCH_DUPLICATE_MSG_ID,
    WRONG_LAST_MSG_ID,
    WRONG_LAST_SEQUENCE,
    Publish,
    Publisher,
    Stored,
)
from .streamread import read_stream
from .tenantkeys import TenantKeys

log = get_logger(__name__)

_TENANT_IN_PATH = re.compile(r"(?<=/tenants/)([^/]+)")

EXPORT_STATE_KEY: Final = "export"
"""The key of ``AuditExportState`` in the audit state bucket (written by :mod:`.auditexport`)."""

REMEMBERED: Final = 200_000
"""How many recent origins a writer remembers (and loads from the log's tail at start)."""


class ChainBroken(SoulboxError):
    """The log holds a record that does not link to the one before it."""

    code = "audit_chain_broken"


class _Block(NamedTuple):
    """Records linked into the chain as one message: the message, its last record's hash and
    every record's origin."""

    message: Publish
    hash: str
    origins: list[str]


class _Prepared(NamedTuple):
    """A record to append: its fields (tenant already a pseudonym), its subject token and origin."""

    fields: dict[str, Any]
    token: str
    origin: str


@dataclass(slots=True)
class Head:
    seq: int = 0
    hash: str = GENESIS
    origin: str | None = None


class AuditLog:
    """Appends records to the chained log ``stream`` (subjects ``<prefix>.<pseudonym>.<kind>``)."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        keys: TenantKeys,
        *,
        export_state: KeyValue | None = None,
        stream: str = names.AUDIT_STREAM,
        subject_prefix: str = "sb.audit",
        remembered: int = REMEMBERED,
        block_records: int = MAX_BLOCK_RECORDS,
        timeout: float = 10.0,
    ) -> None:
        self._js = js
        self._keys = keys
        self._export_state = export_state
        self._stream = stream
        self._prefix = subject_prefix
        self._publisher = Publisher(nc)
        self._seen = RecentIds(remembered)
        self._remembered = remembered
        self._block_records = block_records  # 1: every record a message of its own, as before blocks
        self._timeout = timeout
        self._head: Head | None = None
        self._atomic = False
        self._lock = asyncio.Lock()

    @property
    def head(self) -> Head:
        if self._head is None:
            raise RuntimeError("the audit log is not loaded")
        return self._head

    async def close(self) -> None:
        await self._publisher.close()

    async def load(self) -> Head:
        """Find the head and remember the origins of the log's tail."""
        async with self._lock:
            info = await self._js.stream_info(self._stream)
            self._atomic = bool(info.config.allow_atomic)  # None: an older server, no atomic batches
            last = info.state.last_seq
            self._head = Head()
            if last > 0:
                await self._read_from(await self._tail_start(info.state.first_seq, last), expect_prev=None)
            await self._after_purge(last)
            return self._head

    async def _tail_start(self, first: int, last: int) -> int:
        """Where the log's last ``remembered`` records (about) begin: messages hold one record or a
        block, so the tail is measured backwards, in growing steps."""
        start, counted, step = last + 1, 0, 256
        while start > max(first, 1) and counted < self._remembered:
            low = max(first, 1, start - step)
            async for msg in read_stream(
                self._js, self._stream, start_seq=low, limit=start - low, timeout=self._timeout
            ):
                counted += _record_count(msg.data)
            start, step = low, min(step * 2, 65_536)
        return max(start, first, 1)

    async def _after_purge(self, last_seq: int) -> None:
        """When retention dropped every record, the head is the last exported one."""
        if self.head.seq >= last_seq:
            return
        state = None
        if self._export_state is not None:
            with contextlib.suppress(KeyNotFoundError):
                entry = await self._export_state.get(EXPORT_STATE_KEY)
                state = decode(AuditExportState, entry.value) if entry.value else None
        if state is None or state.last_seq != last_seq:
            raise ChainBroken(f"records up to {last_seq} are gone and the export state does not account for them")
        self._head = Head(seq=state.last_seq, hash=state.last_hash)

    async def _read_from(self, start: int, *, expect_prev: str | None) -> None:
        """Advance the head over the records from message ``start`` on, checking their links."""
        verifier = Verifier(expect_prev=expect_prev, legacy_prefix=expect_prev is None)
        head = self.head
        async for msg in read_stream(self._js, self._stream, start_seq=start, timeout=self._timeout):
            seq = msg.metadata.sequence.stream
            try:
                records = records_of(msg.data)
            except SchemaError as exc:
                raise ChainBroken(f"audit message {seq} is unreadable: {exc.message}") from exc
            if not verifier.feed_all(seq, records):
                problem = verifier.problem
                where = f"{seq}/{problem.index}: {problem.reason}" if problem else f"{seq}: invalid"
                raise ChainBroken(f"audit record {where}")
            self._seen.add_all([record.origin for record in records if record.origin is not None])
            head.seq, head.hash, head.origin = seq, records[-1].hash or GENESIS, records[-1].origin

    async def _catch_up(self) -> None:
        info = await self._js.stream_info(self._stream)
        last = info.state.last_seq
        if last > self.head.seq:
            # Purged past us, or far behind (a standby events process taking over after a long
            # wait): start over from the tail, as load() does, instead of reading everything since.
            if info.state.first_seq > self.head.seq + 1 or last - self.head.seq > self._remembered:
                self._head = Head()
                await self._read_from(await self._tail_start(info.state.first_seq, last), expect_prev=None)
                await self._after_purge(last)
            else:
                await self._read_from(self.head.seq + 1, expect_prev=self.head.hash)

    async def append(self, records: Sequence[AuditRecord]) -> int:
        """Append the records not appended before, in order; the number appended now (see ``append_fields``)."""
        return await self.append_fields(fields_of(list(records)))

    async def append_fields(self, records: list[dict[str, Any]], *, presorted: bool = False) -> int:
        """Append records given as their fields (``AuditRecord.model_dump()`` without ``hash``, or the same
        made more cheaply by the caller), the ones not appended before, in order; the number appended now.

        The dicts are the log's from then on: linking changes them. A record without ``origin`` gets
        ``<kind>.<id>``; its ``tenant`` (a name) is replaced by the tenant's pseudonym, also in a
        ``/tenants/<name>`` resource. ``presorted``: every record's keys, ``detail``'s too, are in sorted
        order and include ``prev_hash`` and ``v`` (see ``chain.seal``). Raises on anything but a lost race.
        """
        prepared = await self._pseudonymize(records)
        async with self._lock:
            if self._head is None:
                raise RuntimeError("the audit log is not loaded")
            appended = 0
            atomic = self._atomic
            pending = self._unseen(prepared)
            while pending:
                if atomic:
                    stored, retry, duplicate = await self._try_atomic(pending, presorted)
                    atomic = not duplicate  # a batch holding a duplicate: one by one, which drops it
                else:
                    stored, retry = await self._try(pending, presorted)
                appended += stored
                if retry:
                    await self._catch_up()
                pending = self._unseen(pending)
            return appended

    def _unseen(self, records: list[_Prepared]) -> list[_Prepared]:
        fresh: list[_Prepared] = []
        batch: set[str] = set()
        for prepared in records:
            origin = prepared.origin
            if origin in batch or origin in self._seen:
                continue
            batch.add(origin)
            fresh.append(prepared)
        return fresh

    def _link(self, records: list[_Prepared], head: Head, presorted: bool) -> list[_Block]:
        """The records chained after ``head``, as messages: one block per tenant and kind, in the
        order their first records came (the log's order is the order of storage). Linking again
        (after a lost race) overwrites what linking set."""
        groups: dict[tuple[str, str], list[_Prepared]] = {}
        for prepared in records:
            groups.setdefault((prepared.token, prepared.fields["kind"]), []).append(prepared)
        blocks: list[_Block] = []
        prev_hash = head.hash
        for (token, kind), members in groups.items():
            for start in range(0, len(members), self._block_records):
                stored: list[bytes] = []
                origins: list[str] = []
                for fields, _, origin in members[start : start + self._block_records]:
                    prev_hash, wire = seal(fields, prev_hash, presorted=presorted)
                    stored.append(wire)
                    origins.append(origin)
                # One record keeps its origin as message id (the server drops a re-sent one); a block
                # relies on the writer's memory of origins and the sequence guard.
                headers = {"Nats-Msg-Id": origins[0]} if len(origins) == 1 else {}
                message = Publish(f"{self._prefix}.{token}.{kind}", pack(stored), headers)
                blocks.append(_Block(message, prev_hash, origins))
        return blocks

    async def _try_atomic(self, records: list[_Prepared], presorted: bool) -> tuple[int, bool, bool]:
        """Atomic batches; (records stored, whether a race was lost, whether a batch held a duplicate)."""
        head = self.head
        stored = 0
        for start in range(0, len(records), ATOMIC_BATCH_MAX):
            linked = self._link(records[start : start + ATOMIC_BATCH_MAX], head, presorted)
            outcome = await self._publisher.publish_atomic(
                [one.message for one in linked], expected_last_seq=head.seq, timeout=self._timeout
            )
            if isinstance(outcome, Stored):
                if outcome.seq != head.seq + len(linked):
                    raise ChainBroken(f"atomic audit batch after {head.seq} ended at {outcome.seq}")
                for one in linked:
                    self._seen.add_all(one.origins)
                head.seq, head.hash, head.origin = outcome.seq, linked[-1].hash, linked[-1].origins[-1]
                stored += sum(len(one.origins) for one in linked)
                continue
            if outcome.err_code == WRONG_LAST_SEQUENCE:
                return stored, True, False
            if outcome.err_code == BATCH_DUPLICATE_MSG_ID:
                return stored, False, True
            raise ChainBroken(f"audit append refused: {outcome.description} ({outcome.err_code})")
        return stored, False, False

    async def _try(self, records: list[_Prepared], presorted: bool) -> tuple[int, bool]:
        """One pipelined attempt, each message guarded; (records stored, whether a race was lost)."""
        head = self.head
        linked = self._link(records, head, presorted)
        messages: list[Publish] = []
        for i, one in enumerate(linked):
            # By sequence, not by the previous message's id: a previous message that was a duplicate
            # (stored long ago, possibly as the stream's last one) must make this one fail too.
            guard = {"Nats-Expected-Last-Sequence": str(head.seq + i)}
            messages.append(Publish(one.message.subject, one.message.payload, {**one.message.headers, **guard}))
        outcomes = await self._publisher.publish(messages, timeout=self._timeout)
        stored = 0
        for one, outcome in zip(linked, outcomes, strict=True):
            if isinstance(outcome, Stored):
                self._seen.add_all(one.origins)
                if outcome.duplicate:  # recorded long ago; what follows was linked to it: relink
                    return stored, False
                head.seq, head.hash, head.origin = outcome.seq, one.hash, one.origins[-1]
                stored += len(one.origins)
                continue
            if outcome.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID):
                return stored, True
            raise ChainBroken(f"audit append refused: {outcome.description} ({outcome.err_code})")
        return stored, False

    async def _pseudonymize(self, records: list[dict[str, Any]]) -> list[_Prepared]:
        """Name every record's tenant by its pseudonym (looked up once per tenant) and set its origin."""
        tokens: dict[str | None, tuple[str, str]] = {}  # tenant -> (its subject token, its pseudonym)
        for tenant in {fields["tenant"] for fields in records}:
            name = names.tenant_token(tenant)
            tokens[tenant] = (name, await self._keys.pseudonym(name) if name != names.NO_TENANT else names.NO_TENANT)
        prepared: list[_Prepared] = []
        for fields in records:
            tenant, token = tokens[fields["tenant"]]
            origin = fields["origin"] = fields["origin"] or f"{fields['kind']}.{fields['id']}"
            fields["tenant"] = None if tenant == names.NO_TENANT else token
            resource = fields["resource"]
            if resource and "/tenants/" in resource:
                fields["resource"] = await self._redact_path(resource, tenant, token)
            prepared.append(_Prepared(fields, token, origin))
        return prepared

    async def _redact_path(self, resource: str, tenant: str, token: str) -> str:
        """``/tenants/<name>`` in a path becomes ``/tenants/<pseudonym>`` (``_`` when it has none)."""
        parts = _TENANT_IN_PATH.split(resource)
        for i in range(1, len(parts), 2):  # the captured names
            name = parts[i]
            if name == tenant:
                parts[i] = token
            else:
                parts[i] = (await self._keys.lookup(name) if NAME_RE.match(name) else None) or names.NO_TENANT
        return "".join(parts)


def _record_count(data: bytes) -> int:
    """How many records a message holds, from its first bytes (a msgpack map: one; an array: its length)."""
    if not data:
        return 0
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    return 1
