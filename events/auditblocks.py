"""The audit stream's messages: one record, or a block of them.

The chained audit log (``SB_AUDIT``) stores what one append brings in
*blocks*: one message per tenant (and kind) per append, a msgpack array of
its records, each still linked to the one before it in the log (``prev_hash``
and ``hash`` per record, see :mod:`.chain`), so verification still names the
one record that was edited or removed. A block of one record, and every
message written before blocks existed, is a single record (a msgpack map).

A record's place in the log is its message's stream sequence and its index
in that message (0 for a single record). Paging cursors fold both into one
integer, its *position* ``seq * SLOTS + index``, so a cursor can stop inside
a block.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
from pydantic import TypeAdapter, ValidationError

from soulbox.core.errors import SchemaError
from soulbox.core.ledger import AuditRecord

MAX_BLOCK_RECORDS: Final = 256
"""The most records one message holds."""
SLOTS: Final = 1024
"""Positions per message (more than a block may hold): ``position = seq * SLOTS + index``."""

_RECORDS: TypeAdapter[list[AuditRecord]] = TypeAdapter(list[AuditRecord])


def records_of(data: bytes) -> list[AuditRecord]:
    """The records a message holds, in order; ``SchemaError`` when it is no (valid) record or block."""
    try:
        raw: Any = msgpack.unpackb(data, timestamp=3)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise SchemaError(f"undecodable audit message: {exc}") from exc
    items = raw if isinstance(raw, list) else [raw]
    if not items or len(items) >= SLOTS:
        raise SchemaError(f"an audit message holds 1 to {SLOTS - 1} records, not {len(items)}")
    for item in items:
        if not isinstance(item, dict) or not isinstance(v := item.get("v", 1), int) or v > AuditRecord.max_version:
            raise SchemaError("an audit record must be a map of a known version")
    try:
        return _RECORDS.validate_python(items)
    except ValidationError as exc:
        raise SchemaError(f"invalid audit record: {exc.errors(include_url=False)[:3]}") from exc


_PACKER = msgpack.Packer()


def pack(records: list[bytes]) -> bytes:
    """A message's payload from its records' stored forms (msgpack maps): one record alone, several
    as a block (an array of them)."""
    if len(records) == 1:
        return records[0]
    header: bytes = _PACKER.pack_array_header(len(records))
    return header + b"".join(records)


def position(seq: int, index: int) -> int:
    return seq * SLOTS + index


def after_message(seq: int) -> int:
    """The position past every record of message ``seq`` (a cursor that resumes with the next message)."""
    return position(seq + 1, 0) - 1


def place(position_: int) -> tuple[int, int]:
    """``(seq, index)`` of a position."""
    return divmod(position_, SLOTS)
