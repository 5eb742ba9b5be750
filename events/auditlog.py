"""The one writer of the chained audit log, safe when several run at once.

Every record is appended by ``AuditLog.append``: it takes the head it knows
(stream sequence, hash, origin of the last record), links the batch to it
(:func:`.chain.link`) and publishes the whole batch pipelined, each message
guarded by the server:

    message 1: Nats-Expected-Last-Sequence = head sequence
    message k: Nats-Expected-Last-Msg-Id   = origin of message k-1
    every one: Nats-Msg-Id                 = its own origin (evt.<id>, api.<id>)

So the server stores a message only if it lands right after the record it
was linked to. When another writer appended in between, the first message is
refused and so is every later one (their expected predecessor is not the
last message), nothing out of chain is ever stored; this writer then reads
what was appended since its head (verifying the links), and retries what is
left. The origin as message id also makes a re-appended record (an event
redelivered after a crash) a duplicate the server drops; past the server's
de-duplication window the writer's memory of recent origins (loaded from the
tail of the log at start) catches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import decode, encode
from soulbox.core.errors import SchemaError, SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import NAME_RE, AuditExportState, AuditRecord

from .chain import GENESIS, Verifier, link
from .metrics import RecentIds
from .pipeline import WRONG_LAST_MSG_ID, WRONG_LAST_SEQUENCE, Publish, Publisher, Stored
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


class _Prepared(NamedTuple):
    """A record to append: the record, its subject token, the fields to replace, its origin."""

    record: AuditRecord
    token: str
    update: dict[str, str | None]
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
        self._timeout = timeout
        self._head: Head | None = None
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
            last = info.state.last_seq
            start = max(info.state.first_seq, last - self._remembered + 1, 1)
            self._head = Head()
            if last > 0:
                await self._read_from(start, expect_prev=None)
            await self._after_purge(last)
            return self._head

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
        """Advance the head over the records from ``start`` on, checking their links."""
        verifier = Verifier(expect_prev=expect_prev, legacy_prefix=expect_prev is None)
        head = self.head
        async for msg in read_stream(self._js, self._stream, start_seq=start, timeout=self._timeout):
            seq = msg.metadata.sequence.stream
            try:
                record = decode(AuditRecord, msg.data)
            except SchemaError as exc:
                raise ChainBroken(f"audit record {seq} is unreadable: {exc.message}") from exc
            if not verifier.feed(seq, record):
                problem = verifier.problem
                raise ChainBroken(f"audit record {seq}: {problem.reason if problem else 'invalid'}")
            head.seq, head.hash, head.origin = seq, record.hash or GENESIS, record.origin
            if record.origin is not None:
                self._seen.add(record.origin)

    async def _catch_up(self) -> None:
        info = await self._js.stream_info(self._stream)
        if info.state.last_seq > self.head.seq:
            if info.state.first_seq > self.head.seq + 1:  # purged past us: start over
                self._head = Head()
                await self._read_from(info.state.first_seq, expect_prev=None)
                await self._after_purge(info.state.last_seq)
            else:
                await self._read_from(self.head.seq + 1, expect_prev=self.head.hash)

    async def append(self, records: list[AuditRecord]) -> int:
        """Append the records not appended before, in order; the number appended now.

        A record without ``origin`` gets ``<kind>.<id>``; its ``tenant`` (a name) is
        replaced by the tenant's pseudonym, also in a ``/tenants/<name>``
        resource. Raises on anything but a lost race.
        """
        prepared = [await self._pseudonymize(record) for record in records]
        async with self._lock:
            if self._head is None:
                raise RuntimeError("the audit log is not loaded")
            appended = 0
            pending = self._unseen(prepared)
            while pending:
                stored, retry = await self._try(pending)
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

    async def _try(self, records: list[_Prepared]) -> tuple[int, bool]:
        """One pipelined attempt; (records stored, whether a race was lost)."""
        head = self.head
        linked: list[AuditRecord] = []
        messages: list[Publish] = []
        prev_hash, prev_origin = head.hash, head.origin
        for i, (record, token, update, _origin) in enumerate(records):
            chained = link(record, prev_hash, update)
            guard = (
                {"Nats-Expected-Last-Sequence": str(head.seq)}
                if i == 0 or prev_origin is None
                else {"Nats-Expected-Last-Msg-Id": prev_origin}
            )
            subject = f"{self._prefix}.{token}.{record.kind}"
            messages.append(Publish(subject, encode(chained), {"Nats-Msg-Id": chained.origin or "", **guard}))
            linked.append(chained)
            prev_hash, prev_origin = chained.hash or GENESIS, chained.origin
        outcomes = await self._publisher.publish(messages, timeout=self._timeout)
        stored = 0
        for record, outcome in zip(linked, outcomes, strict=True):
            origin = record.origin or ""
            if isinstance(outcome, Stored):
                self._seen.add(origin)
                if outcome.duplicate:  # recorded long ago; what follows was linked to it: relink
                    return stored, False
                head.seq, head.hash, head.origin = outcome.seq, record.hash or GENESIS, origin
                stored += 1
                continue
            if outcome.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID):
                return stored, True
            raise ChainBroken(f"audit append refused: {outcome.description} ({outcome.err_code})")
        return stored, False

    async def _pseudonymize(self, record: AuditRecord) -> _Prepared:
        tenant = names.tenant_token(record.tenant)
        token = await self._keys.pseudonym(tenant) if tenant != names.NO_TENANT else names.NO_TENANT
        origin = record.origin or f"{record.kind}.{record.id}"
        update: dict[str, str | None] = {"tenant": None if tenant == names.NO_TENANT else token, "origin": origin}
        if record.resource and "/tenants/" in record.resource:
            update["resource"] = await self._redact_path(record.resource, tenant, token)
        return _Prepared(record, token, update, origin)

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
