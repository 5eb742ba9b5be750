"""The identity records in NATS KV, and the secrets behind API keys and OAuth2 clients.

An API key is ``sb_<id>_<secret>``: ``id`` (12 hex digits) is its name in
logs and audit records and the KV key of its record; ``secret`` is 256
random bits, returned once at creation and stored only as its SHA-256.
OAuth2 clients are the same: ``sbc_<id>`` with a secret kept as a digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Final

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.errors import Conflict, NotFound
from soulbox.core.identity import ApiKeyRecord, OAuthClientRecord, Role, TenantRecord, UserRecord
from soulbox.core.schemas import utcnow
from soulbox.core.store import get_model, scan

KEY_RE: Final = re.compile(r"^sb_([0-9a-f]{12})_([A-Za-z0-9_-]{32,64})$")
CLIENT_ID_RE: Final = re.compile(r"^sbc_[0-9a-f]{16}$")
ID_RE: Final = re.compile(r"^[0-9a-f]{12,32}$")


class KeyNotFound(NotFound):
    code = "api_key_not_found"


class ClientNotFound(NotFound):
    code = "oauth_client_not_found"


class UserNotFound(NotFound):
    code = "user_not_found"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_digest: str) -> bool:
    """Constant-time: a wrong secret takes as long to refuse whatever its first differing byte."""
    return hmac.compare_digest(digest(secret).encode(), stored_digest.encode())


def parse_key(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a SoulBox API key, or None when ``text`` does not look like one."""
    found = KEY_RE.match(text)
    return (found.group(1), found.group(2)) if found else None


def user_id(issuer: str, subject: str) -> str:
    """A user's id: derived from the identity, so a lookup needs no index and a person is registered once."""
    return hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:24]


def alive(record: ApiKeyRecord, now: datetime | None = None) -> str | None:
    """Why ``record`` is no longer usable (``key_revoked``, ``key_expired``), or None."""
    if record.revoked_at is not None:
        return "key_revoked"
    if record.expires_at is not None and record.expires_at <= (now or utcnow()):
        return "key_expired"
    return None


class IdentityStore:
    """Tenants, users, API keys and OAuth2 clients: every read and write of their KV buckets."""

    def __init__(self, buckets: Buckets) -> None:
        self.tenants_kv = buckets.tenants
        self.users_kv = buckets.users
        self.keys_kv = buckets.api_keys
        self.clients_kv = buckets.oauth_clients

    # Tenants ------------------------------------------------------------------
    async def create_tenant(self, record: TenantRecord) -> None:
        await _create(self.tenants_kv, record.name, record, f"tenant {record.name!r} exists")

    async def tenant(self, name: str) -> TenantRecord | None:
        return await get_model(self.tenants_kv, name, TenantRecord)

    async def tenants(self) -> list[TenantRecord]:
        return sorted([t async for _, t in scan(self.tenants_kv, ">", TenantRecord)], key=lambda t: t.name)

    # API keys -------------------------------------------------------------------
    async def create_key(
        self,
        tenant: str,
        *,
        name: str,
        role: Role,
        scopes: tuple[str, ...],
        expires_at: datetime | None,
        created_by: str | None,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key's record and the whole key (``sb_<id>_<secret>``), the only time it is seen."""
        while True:
            key_id, secret = secrets.token_hex(6), new_secret()
            record = ApiKeyRecord(
                id=key_id,
                tenant=tenant,
                name=name,
                role=role,
                scopes=scopes,
                secret_sha256=digest(secret),
                expires_at=expires_at,
                created_by=created_by,
            )
            try:
                await self.keys_kv.create(key_id, encode(record))
            except KeyWrongLastSequenceError:
                continue  # 48 random bits collided: draw again
            return record, f"sb_{key_id}_{secret}"

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        if not ID_RE.match(key_id):
            return None
        return await get_model(self.keys_kv, key_id, ApiKeyRecord)

    async def tenant_key(self, tenant: str, key_id: str) -> ApiKeyRecord:
        """The key ``key_id`` of ``tenant``; another tenant's key is as absent as an unknown one."""
        record = await self.key(key_id)
        if record is None or record.tenant != tenant:
            raise KeyNotFound(f"API key {key_id!r} does not exist")
        return record

    async def keys(self, tenant: str) -> list[ApiKeyRecord]:
        found = [k async for _, k in scan(self.keys_kv, ">", ApiKeyRecord) if k.tenant == tenant]
        return sorted(found, key=lambda k: k.created_at)

    async def revoke_key(self, tenant: str, key_id: str) -> ApiKeyRecord:
        record = await self.tenant_key(tenant, key_id)
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": utcnow()})
            await self.keys_kv.put(key_id, encode(record))
        return record

    # OAuth2 clients -------------------------------------------------------------
    async def create_client(
        self, tenant: str, *, name: str, role: Role, scopes: tuple[str, ...], created_by: str | None
    ) -> tuple[OAuthClientRecord, str]:
        secret = new_secret()
        record = OAuthClientRecord(
            id=f"sbc_{secrets.token_hex(8)}",
            tenant=tenant,
            name=name,
            role=role,
            scopes=scopes,
            secret_sha256=digest(secret),
            created_by=created_by,
        )
        await _create(self.clients_kv, record.id, record, "client id collision, retry")
        return record, secret

    async def client(self, client_id: str) -> OAuthClientRecord | None:
        if not CLIENT_ID_RE.match(client_id):
            return None
        return await get_model(self.clients_kv, client_id, OAuthClientRecord)

    async def clients(self, tenant: str) -> list[OAuthClientRecord]:
        found = [c async for _, c in scan(self.clients_kv, ">", OAuthClientRecord) if c.tenant == tenant]
        return sorted(found, key=lambda c: c.created_at)

    async def revoke_client(self, tenant: str, client_id: str) -> OAuthClientRecord:
        record = await self.client(client_id)
        if record is None or record.tenant != tenant:
            raise ClientNotFound(f"OAuth client {client_id!r} does not exist")
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": utcnow()})
            await self.clients_kv.put(client_id, encode(record))
        return record

    # Users -----------------------------------------------------------------------
    async def create_user(self, record: UserRecord) -> None:
        key = names.user_key(record.tenant, record.id)
        await _create(self.users_kv, key, record, f"user {record.subject!r} of {record.issuer} is registered")

    async def user(self, tenant: str, uid: str) -> UserRecord | None:
        if not ID_RE.match(uid):
            return None
        return await get_model(self.users_kv, names.user_key(tenant, uid), UserRecord)

    async def tenant_user(self, tenant: str, uid: str) -> UserRecord:
        record = await self.user(tenant, uid)
        if record is None:
            raise UserNotFound(f"user {uid!r} does not exist")
        return record

    async def users(self, tenant: str) -> list[UserRecord]:
        found = [u async for _, u in scan(self.users_kv, f"{tenant}.*", UserRecord)]
        return sorted(found, key=lambda u: u.created_at)

    async def delete_user(self, tenant: str, uid: str) -> None:
        await self.tenant_user(tenant, uid)
        await self.users_kv.delete(names.user_key(tenant, uid))


async def _create(kv: KeyValue, key: str, record: TenantRecord | UserRecord | OAuthClientRecord, clash: str) -> None:
    try:
        await kv.create(key, encode(record))
    except KeyWrongLastSequenceError:
        raise Conflict(clash) from None
