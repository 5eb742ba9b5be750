"""Pseudonymous tenant keys: how the audit log names tenants, and how it forgets them.

The audit log is an append-only hash chain: no record can be edited or
removed without the chain showing it, so it must not hold what a tenant may
ask us to erase. Its records therefore never carry the tenant's name, only a
pseudonym: ``p`` + the first 24 hex digits of HMAC-SHA256(secret, tenant),
where the secret is random, one per tenant, kept in the ``sb_tenant_keys``
bucket. Subjects (``sb.audit.<pseudonym>.<kind>``) and resource paths that
mention the tenant use the pseudonym too.

Erasure (GDPR) deletes the tenant's secret (crypto-shredding): the records
stay, the chain still verifies, but nothing links them to the tenant any
more. The erasure itself is recorded in the chain as a ``tenant.erased``
tombstone under the old pseudonym. Records that arrive after the erasure (a
late event of an in-flight invocation) start a new secret, so they are not
linked to the erased history either. Other fields of API-call records
(``source`` address, ``actor``) are kept for security auditing and are only
reachable through the pseudonym.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core.names import NO_TENANT


def pseudonym(secret: bytes, tenant: str) -> str:
    return "p" + hmac.new(secret, tenant.encode(), hashlib.sha256).hexdigest()[:24]


class TenantKeys:
    """The tenants' pseudonyms, cached in memory for ``ttl`` seconds.

    The cache is short so that an erasure made by another process (the
    gateway) is noticed within ``ttl`` by the audit writer.
    """

    def __init__(self, kv: KeyValue, *, ttl: float = 5.0) -> None:
        self._kv = kv
        self._ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}

    async def lookup(self, tenant: str) -> str | None:
        """The tenant's pseudonym, or None when it has none (never recorded, or erased)."""
        if tenant == NO_TENANT:
            return NO_TENANT
        cached = self._cache.get(tenant)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            entry = await self._kv.get(tenant)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        name = pseudonym(entry.value, tenant)
        self._cache[tenant] = (name, now + self._ttl)
        return name

    async def pseudonym(self, tenant: str) -> str:
        """The tenant's pseudonym, made now (race-free across writers) if it has none."""
        existing = await self.lookup(tenant)
        if existing is not None:
            return existing
        with contextlib.suppress(KeyWrongLastSequenceError):  # another writer made it first: use theirs
            await self._kv.create(tenant, secrets.token_bytes(32))
        found = await self.lookup(tenant)
        if found is None:
            raise RuntimeError(f"the key of tenant {tenant!r} vanished while it was made")
        return found

    async def forget(self, tenant: str) -> None:
        """Delete the tenant's secret for good (all revisions)."""
        self._cache.pop(tenant, None)
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.purge(tenant)
