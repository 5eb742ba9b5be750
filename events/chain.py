"""The hash chain of the audit log: canonical bytes, linking, and verification.

A record's canonical bytes are its fields (every field but ``hash``, keys
sorted, ``detail``'s too) packed as one msgpack map, ``at`` as a msgpack
timestamp (record version 2; version 1 records, written before, used compact
UTF-8 JSON of the same fields and keep verifying as such). Its ``hash`` is the SHA-256 of those bytes,
which include ``prev_hash``, the previous record's ``hash`` (``GENESIS`` for
the first record ever). So editing a record changes its hash, deleting one
breaks the link of the next, and swapping two breaks both links; a verifier
needs nothing but the records themselves, in order.

    record n-1                      record n
    {..., prev_hash, hash} ──────> {..., prev_hash = hash(n-1), hash = sha256(canonical(n))}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgpack
from pydantic import BaseModel, TypeAdapter

from soulbox.core.ledger import AuditRecord

GENESIS: Final = "0" * 64
"""The ``prev_hash`` of the first record of a chain."""

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""Version 1 records' canonical bytes: compact JSON, keys sorted."""

FORM: Final = 2
"""The version records are linked in now: canonical bytes in msgpack. Version 1 (JSON) cost a
third of the audit writer's time in the JSON encoder."""
_JSON_FORM: Final = 1


def _naive_as_utc(value: object) -> object:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    raise TypeError(f"an audit record cannot hold {type(value).__name__}")


_PACKER = msgpack.Packer(datetime=True, default=_naive_as_utc)
_HASH_KEY: Final = _PACKER.pack("hash")


def _sorted(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its keys, and those of maps in it, in sorted order."""
    return {k: _sorted(v) if isinstance(v, dict) else v for k, v in sorted(body.items())}


def canonical(record: AuditRecord) -> bytes:
    """The bytes a record's hash covers: its fields without ``hash``, keys sorted, as msgpack with
    ``at`` a timestamp (version 1 records: as compact JSON)."""
    if record.v == _JSON_FORM:
        return _CANONICAL.encode(record.model_dump(mode="json", exclude={"hash"})).encode()
    packed: bytes = _PACKER.pack(_sorted(record.model_dump(exclude={"hash"})))
    return packed


def record_hash(record: AuditRecord) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


_RECORDS = TypeAdapter(list[AuditRecord])


def fields_of(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """Every record's fields without ``hash`` (what ``canonical`` encodes), dumped in one go."""
    bodies: list[dict[str, Any]] = _RECORDS.dump_python(records)
    for body in bodies:
        body.pop("hash", None)
    return bodies


def seal(fields: dict[str, Any], prev_hash: str, *, presorted: bool = False) -> tuple[str, bytes]:
    """Link a record's fields (from ``fields_of``; ``prev_hash`` and ``v`` set in place) after
    ``prev_hash``: the record's hash and its stored form, the canonical map with ``hash`` added (no
    second encoding of the record).

    ``presorted``: the keys, ``detail``'s too, are in sorted order and include ``prev_hash`` and
    ``v`` (so setting them keeps the order), which spares sorting them.
    """
    fields["prev_hash"] = prev_hash
    fields["v"] = FORM
    packed = _PACKER.pack(fields if presorted else _sorted(fields))
    hash_ = hashlib.sha256(packed).hexdigest()
    header = _PACKER.pack_map_header(len(fields))
    stored = b"".join((_PACKER.pack_map_header(len(fields) + 1), packed[len(header) :], _HASH_KEY, _PACKER.pack(hash_)))
    return hash_, stored


def link(record: AuditRecord, prev_hash: str, update: dict[str, str | None] | None = None) -> AuditRecord:
    """``record`` (with the string fields in ``update`` replaced) placed after a record whose
    hash is ``prev_hash``, with its own hash set."""
    hash_, _ = seal({**record.model_dump(exclude={"hash"}), **(update or {})}, prev_hash)
    return record.model_copy(update={**(update or {}), "prev_hash": prev_hash, "hash": hash_, "v": FORM})


class Problem(BaseModel):
    """The first record that does not verify, and why: the message's stream sequence and the
    record's index in it (0 for a message of one record)."""

    seq: int
    index: int = 0
    id: str | None
    reason: str


class Verdict(BaseModel):
    """The result of verifying a chain (or a stretch of one)."""

    ok: bool
    records: int
    legacy: int = 0
    first_seq: int | None
    last_seq: int | None
    first_prev_hash: str | None
    last_hash: str | None
    problem: Problem | None = None


@dataclass(slots=True)
class Verifier:
    """Checks records fed in order; remembers the first problem.

    ``expect_prev`` is the hash the first record must link to (``GENESIS``
    for a whole chain, the last hash of the previous segment for a later
    stretch, None to accept whatever the first record says). Sequences must
    follow each other without gaps when ``contiguous``. With ``legacy``,
    unchained records before the first chained one (a log written before
    the chain existed) are counted and skipped, and the chain starts after
    them at ``GENESIS``.
    """

    expect_prev: str | None = GENESIS
    contiguous: bool = True
    legacy_prefix: bool = False
    legacy: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_index: int = 0
    first_prev_hash: str | None = None
    last_hash: str | None = None
    problem: Problem | None = None

    def feed(self, seq: int, record: AuditRecord, index: int = 0) -> bool:
        """Check one record (the ``index``-th of message ``seq``); False (and the problem kept) when
        it does not verify."""
        if self.problem is not None:
            return False
        if self.legacy_prefix and self.first_seq is None and record.hash is None:
            self.legacy += 1
            return True
        reason = self._check(seq, index, record)
        if reason is not None:
            self.problem = Problem(seq=seq, index=index, id=record.id, reason=reason)
            return False
        if self.first_seq is None:
            self.first_seq, self.first_prev_hash = seq, record.prev_hash
        self.records += 1
        self.last_seq, self.last_index, self.last_hash = seq, index, record.hash
        return True

    def feed_all(self, seq: int, records: list[AuditRecord]) -> bool:
        """Check every record of message ``seq`` (one record or a block), in order."""
        return all(self.feed(seq, record, index) for index, record in enumerate(records))

    def fail(self, seq: int, reason: str) -> None:
        """Record a problem found outside a record (an unreadable message)."""
        if self.problem is None:
            self.problem = Problem(seq=seq, id=None, reason=reason)

    def _check(self, seq: int, index: int, record: AuditRecord) -> str | None:
        if record.hash is None or record.prev_hash is None:
            return "record is not chained (no hash)"
        if record_hash(record) != record.hash:
            return "hash does not match the record's content (edited)"
        expected = self.last_hash if self.last_seq is not None else self.expect_prev
        if self.last_seq is None and self.legacy:
            expected = GENESIS
        if expected is not None and record.prev_hash != expected:
            return "prev_hash does not match the previous record (a record before it was removed or reordered)"
        if self.contiguous and self.last_seq is not None:
            follows = index == self.last_index + 1 if seq == self.last_seq else seq == self.last_seq + 1 and index == 0
            if not follows:
                return f"record {seq}/{index} follows {self.last_seq}/{self.last_index} (records missing)"
        return None

    def verdict(self) -> Verdict:
        return Verdict(
            ok=self.problem is None,
            records=self.records,
            legacy=self.legacy,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            first_prev_hash=self.first_prev_hash,
            last_hash=self.last_hash,
            problem=self.problem,
        )


def verify(records: Iterable[tuple[int, AuditRecord]], *, expect_prev: str | None = GENESIS) -> Verdict:
    """Verify ``(seq, record)`` pairs in order; the verdict names the first bad record."""
    verifier = Verifier(expect_prev=expect_prev)
    for seq, record in records:
        if not verifier.feed(seq, record):
            break
    return verifier.verdict()


async def averify(records: AsyncIterable[tuple[int, AuditRecord]], *, expect_prev: str | None = GENESIS) -> Verdict:
    """``verify`` over an async stream of records."""
    verifier = Verifier(expect_prev=expect_prev)
    async for seq, record in records:
        if not verifier.feed(seq, record):
            break
    return verifier.verdict()
