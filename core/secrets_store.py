"""Tenants' secrets: sealed in the secrets bucket, revealed only to the process that runs with them.

A secret is stored under ``<tenant>.<name>`` as a :class:`SecretEntry` whose
value is an :class:`~soulbox.core.secrets.Envelope` bound to that tenant and
name. The gateway writes, lists and deletes secrets but never opens one; the
worker that starts a function or sandbox referencing secrets reads the
entries itself (nothing carries values over NATS), and every value it opens
is first recorded in the audit log (``secret.read``: who, which secret, for
which invocation or sandbox; never the value). If the audit record cannot be
stored, the values are not handed out.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from . import names
from .codec import decode, encode
from .errors import InvalidRequest, NotFound
from .ledger import AuditRecord
from .logging import get_logger
from .schemas import Message, Name, utcnow
from .secrets import Envelope, MasterKeys, SecretsError
from .store import scan, settle

log = get_logger(__name__)

SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
SECRET_NAME_RE = re.compile(SECRET_NAME_PATTERN)
MAX_SECRET_BYTES = 64 * 1024


class SecretNotFound(NotFound):
    code = "secret_not_found"


class SecretEntry(Message):
    """One secret as the bucket holds it: only its envelope, never the value."""

    tenant: Name
    name: str
    envelope: Envelope
    version: int = 1  # counts the values the secret has had
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class SecretInfo(BaseModel):
    """What the API shows of a secret: its name and history, never its value."""

    name: str
    version: int
    master_key_id: str = Field(description="the master key its data key is wrapped by")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, entry: SecretEntry) -> SecretInfo:
        return cls(
            name=entry.name,
            version=entry.version,
            master_key_id=entry.envelope.kid,
            created_at=entry.created_at,
            updated_at=entry.updated_at,
        )


def checked_secret_name(name: str) -> str:
    if not SECRET_NAME_RE.match(name):
        raise InvalidRequest(f"invalid secret name {name!r}: 1-63 of A-Z, a-z, 0-9, '-' and '_'")
    return name


def secret_context(tenant: str, name: str) -> bytes:
    """What a secret's envelope is bound to: a copy under another tenant or name does not open."""
    return b"soulbox-secret\0" + tenant.encode() + b"\0" + name.encode()


class SecretStore:
    """The secrets bucket, sealed with ``keys``."""

    def __init__(self, kv: KeyValue, keys: MasterKeys) -> None:
        self._kv = kv
        self._keys = keys

    async def put(self, tenant: str, name: str, value: str) -> tuple[SecretInfo, bool]:
        """Store (or replace) a secret; True when it is new."""
        checked_secret_name(name)
        data = value.encode()
        if not data or len(data) > MAX_SECRET_BYTES or "\0" in value:
            raise InvalidRequest(f"a secret value is 1 to {MAX_SECRET_BYTES} bytes of text without NUL")
        key = names.secret_key(tenant, name)
        envelope = self._keys.seal(data, secret_context(tenant, name))
        while True:
            previous = await self._entry(key)
            now = utcnow()
            if previous is None:
                entry = SecretEntry(tenant=tenant, name=name, envelope=envelope, created_at=now, updated_at=now)
                try:
                    await self._kv.create(key, encode(entry))
                except KeyWrongLastSequenceError:
                    continue  # made meanwhile: replace it
                return SecretInfo.of(entry), True
            revision, old = previous
            entry = old.model_copy(update={"envelope": envelope, "version": old.version + 1, "updated_at": now})
            try:
                await self._kv.update(key, encode(entry), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return SecretInfo.of(entry), False

    async def info(self, tenant: str, name: str) -> SecretInfo:
        found = await self._entry(names.secret_key(tenant, checked_secret_name(name)))
        if found is None:
            raise SecretNotFound(f"secret {name!r} does not exist")
        return SecretInfo.of(found[1])

    async def list(self, tenant: str) -> list[SecretInfo]:
        entries = [SecretInfo.of(entry) async for _, entry in scan(self._kv, f"{tenant}.>", SecretEntry)]
        return sorted(entries, key=lambda e: e.name)

    async def delete(self, tenant: str, name: str) -> None:
        key = names.secret_key(tenant, checked_secret_name(name))
        if await self._entry(key) is None:
            raise SecretNotFound(f"secret {name!r} does not exist")
        await self._kv.purge(key)  # no revision of the envelope stays behind

    async def check_exist(self, tenant: str, secret_names: set[str]) -> None:
        """``InvalidRequest`` (``unknown_secret``) naming the first of ``secret_names`` the tenant lacks."""
        for name in sorted(secret_names):
            checked_secret_name(name)
            if await self._entry(names.secret_key(tenant, name)) is None:
                raise InvalidRequest(f"secret {name!r} does not exist", code="unknown_secret")

    async def reveal(
        self,
        js: JetStreamContext,
        tenant: str,
        bindings: Mapping[str, str],
        *,
        actor: str,
        source: str,
        detail: Mapping[str, str | None],
    ) -> dict[str, str]:
        """``{env var: value}`` for ``bindings`` (env var -> secret name), each read audited first.

        ``actor`` names who runs with the values (``function:<name>``, ``sandbox:<id>``),
        ``detail`` what for (invocation id, sandbox id); both go into the audit records.
        """
        values: dict[str, str] = {}
        records: list[AuditRecord] = []
        for env, name in sorted(bindings.items()):
            found = await self._entry(names.secret_key(tenant, name))
            if found is None:
                raise SecretNotFound(f"secret {name!r} (bound to {env}) does not exist")
            values[env] = self._keys.open(found[1].envelope, secret_context(tenant, name)).decode()
            info: dict[str, str | int | float | bool | None] = {"secret": name, "env": env, "version": found[1].version}
            info.update({k: v for k, v in detail.items() if v is not None})
            records.append(
                AuditRecord(
                    id=uuid.uuid4().hex,
                    kind="event",
                    tenant=tenant,
                    actor=actor,
                    action="secret.read",
                    resource=f"secrets/{name}",
                    result="revealed",
                    source=source,
                    detail=info,
                )
            )
        acks = []
        for record in records:
            origin = f"secret.{record.id}"
            acks.append(
                await js.publish_async(
                    names.AUDIT_INTAKE_SECRETS_SUBJECT,
                    encode(record.model_copy(update={"origin": origin})),
                    headers={"Nats-Msg-Id": origin},
                )
            )
        await settle(acks)  # no audit record, no value
        return values

    async def rewrap_all(self) -> int:
        """Rewrap every data key not under the active master key; the number rewrapped.

        Compare-and-set per entry, so gateways doing it at once (or a put meanwhile) are safe.
        """
        rewrapped = 0
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return 0
        for key in keys:
            found = await self._entry(key)
            if found is None or found[1].envelope.kid == self._keys.active:
                continue
            revision, entry = found
            tenant, _, name = key.partition(".")  # the key, not the entry's fields: what reveal checks
            try:
                envelope = self._keys.rewrap(entry.envelope, secret_context(tenant, name))
            except SecretsError as exc:  # left as it is: it does not open here either way
                log.warning("secrets.not_rewrapped", key=key, error=exc.message)
                continue
            try:
                await self._kv.update(key, encode(entry.model_copy(update={"envelope": envelope})), last=revision)
            except KeyWrongLastSequenceError:
                continue  # changed meanwhile, under the active key
            rewrapped += 1
        if rewrapped:
            log.info("secrets.rewrapped", count=rewrapped, master_key_id=self._keys.active)
        return rewrapped

    async def _entry(self, key: str) -> tuple[int, SecretEntry] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return entry.revision or 0, decode(SecretEntry, entry.value)
