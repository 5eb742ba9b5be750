"""What billing and audit keep: usage entries, audit records and how far the audit log is exported.

Wire schemas like those of :mod:`soulbox.core.schemas` (msgpack, versioned),
kept apart because only the event consumers and the APIs over their stores
use them.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from .schemas import Message, Name, Outcome, Tier, utcnow


class AuditRecord(Message):
    """One entry of the audit log.

    In the chained log (``SB_AUDIT``) ``tenant`` is the tenant's pseudonym
    (see :mod:`soulbox.events.tenantkeys`), ``origin`` names what the record
    was made from (``evt.<event id>``, ``api.<record id>``) and ``prev_hash``
    / ``hash`` link it into the SHA-256 chain (:mod:`soulbox.events.chain`).
    Records on the intake stream carry the real tenant and no hashes.
    Version 2 records (the chain's since 2026-11-24) are hashed over msgpack, version 1
    records over JSON (``soulbox.events.chain.canonical``); their fields are the same.
    """

    max_version: ClassVar[int] = 2

    id: str
    kind: Literal["api", "event"]
    at: datetime = Field(default_factory=utcnow)
    tenant: str | None = None
    actor: str | None = None
    action: str
    resource: str | None = None
    result: str | None = None
    source: str | None = None
    detail: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    origin: str | None = None
    prev_hash: str | None = None
    hash: str | None = None


class UsageEntry(Message):
    """One billed unit (an invocation, a sandbox period), keyed by its id in the billing bucket.

    ``kind`` names the meter that made it (``invocation``, ``sandbox``); the
    quantities a meter does not measure stay zero.
    """

    invocation_id: str
    tenant: Name
    function: Name
    tier: Tier | None
    outcome: Outcome | None
    at: datetime
    billable_ms: int
    memory_mb: int
    gb_seconds: float
    kind: str = "invocation"
    invocations: int = 1
    cpu_seconds: float = 0.0
    sandbox_seconds: float = 0.0
    egress_bytes: int = 0


class AuditExportState(Message):
    """How far the audit log is exported: kept in the audit state bucket, updated by compare-and-set."""

    segments: int = 0
    last_seq: int = 0
    last_hash: str = "0" * 64
    at: datetime = Field(default_factory=utcnow)
