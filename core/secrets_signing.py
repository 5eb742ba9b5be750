"""Signed URLs: the signature format and the tenants' signing keys.

A signed URL carries four query parameters besides its own:

* ``sb_kid``: the signing key's id, ``<tenant>.<12 hex>`` (so the tenant is known before any lookup);
* ``sb_exp``: expiry, Unix seconds;
* ``sb_nonce``: 16-64 characters of ``[A-Za-z0-9_-]``, single use;
* ``sb_sig``: unpadded base64url HMAC-SHA256, with the key, of :func:`canonical` — the
  method, the path, the URL's other query parameters (sorted), the key id, the expiry and the nonce.

Each tenant has a ring of random 256-bit keys in the signing-keys bucket, each
sealed with the master key like a secret (:mod:`.secrets`). The newest signs;
rotating adds a new key and retires the others, which still verify until
``signed_urls.rotation_grace_s`` after their retirement, then not at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from .codec import decode, encode
from .errors import InvalidRequest, Unauthenticated
from .logging import get_logger
from .schemas import NAME_PATTERN, Message, Name, utcnow
from .secrets import Envelope, MasterKeys, SecretsError

log = get_logger(__name__)

PARAMS = ("sb_kid", "sb_exp", "sb_nonce", "sb_sig")
KID_RE = re.compile(NAME_PATTERN[:-1] + r"\.[0-9a-f]{12}$")
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SIG_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
EXP_RE = re.compile(r"^[0-9]{1,12}$")
RING_CACHE_S = 5.0


class BadSignature(Unauthenticated):
    """A signed URL that is malformed, altered, signed with an unknown key, or expired."""

    code = "invalid_signature"


@dataclass(frozen=True, slots=True)
class SignedParams:
    """The signature parameters of a URL, and its other query parameters."""

    kid: str
    expires: int
    nonce: str
    signature: str
    rest: tuple[tuple[str, str], ...]

    @property
    def tenant(self) -> str:
        return self.kid.rpartition(".")[0]


def parse_signed(query_string: str) -> SignedParams | None:
    """The signature in ``query_string``; None when it has no ``sb_`` parameter, ``BadSignature`` when
    it has some but not exactly one valid value of each."""
    pairs = parse_qsl(query_string, keep_blank_values=True)
    found: dict[str, list[str]] = {}
    rest: list[tuple[str, str]] = []
    for key, value in pairs:
        if key.startswith("sb_"):
            found.setdefault(key, []).append(value)
        else:
            rest.append((key, value))
    if not found:
        return None
    if set(found) != set(PARAMS) or any(len(v) != 1 for v in found.values()):
        raise BadSignature(f"a signed URL carries exactly one each of {', '.join(PARAMS)} and no other sb_ parameter")
    kid, exp, nonce, sig = (found[p][0] for p in PARAMS)
    if not KID_RE.match(kid) or not EXP_RE.match(exp) or not NONCE_RE.match(nonce) or not SIG_RE.match(sig):
        raise BadSignature("malformed signature parameters")
    return SignedParams(kid=kid, expires=int(exp), nonce=nonce, signature=sig, rest=tuple(sorted(rest)))


def canonical(method: str, path: str, rest: tuple[tuple[str, str], ...], kid: str, expires: int, nonce: str) -> bytes:
    """What is signed: one field a line, the query parameters (not the signature's) sorted and encoded."""
    return "\n".join(
        ["soulbox-signed-url-v1", method.upper(), path, urlencode(sorted(rest)), kid, str(expires), nonce]
    ).encode()


def signature(key: bytes, message: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).rstrip(b"=").decode()


def sign_query(
    key: bytes, kid: str, method: str, path: str, rest: tuple[tuple[str, str], ...], expires: int, nonce: str
) -> str:
    """The whole query string of the signed URL: its own parameters, then the signature's."""
    sig = signature(key, canonical(method, path, rest, kid, expires, nonce))
    return urlencode([*rest, ("sb_kid", kid), ("sb_exp", str(expires)), ("sb_nonce", nonce), ("sb_sig", sig)])


def check_signature(key: bytes, method: str, path: str, params: SignedParams) -> None:
    """``BadSignature`` unless ``params.signature`` signs this request (constant-time comparison)."""
    expected = signature(key, canonical(method, path, params.rest, params.kid, params.expires, params.nonce))
    if not hmac.compare_digest(expected.encode(), params.signature.encode()):
        raise BadSignature("the signature does not match the request")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)  # 24 characters, 144 bits


class SigningKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kid: str
    envelope: Envelope
    created_at: datetime = Field(default_factory=utcnow)
    retired_at: datetime | None = None


class SigningKeyRing(Message):
    """A tenant's signing keys, newest (the one that signs) first."""

    tenant: Name
    keys: list[SigningKey] = Field(default_factory=list)


def key_context(tenant: str, kid: str) -> bytes:
    return b"soulbox-signing-key\0" + tenant.encode() + b"\0" + kid.encode()


class SigningKeys:
    """The tenants' signing keys in the signing-keys bucket, cached for ``cache_s`` (a miss looks again).

    Another gateway's rotation is therefore seen within ``cache_s``: a key it retired may verify
    that much longer than its grace period.
    """

    def __init__(self, kv: KeyValue, master: MasterKeys, *, grace_s: float, cache_s: float = RING_CACHE_S) -> None:
        self._kv = kv
        self._cache_s = cache_s
        self._master = master
        self._grace = timedelta(seconds=grace_s)
        self._cache: dict[str, tuple[float, int, SigningKeyRing]] = {}

    async def current(self, tenant: str) -> tuple[str, bytes]:
        """The key that signs for ``tenant`` (made on first use)."""
        _, ring = await self._ring(tenant, fresh=False)
        if ring is None or not ring.keys or ring.keys[0].retired_at is not None:
            _, ring = await self._add_key(tenant)
        newest = ring.keys[0]
        return newest.kid, self._master.open(newest.envelope, key_context(tenant, newest.kid))

    async def rotate(self, tenant: str) -> tuple[str, datetime | None]:
        """A new signing key; the earlier ones verify until the grace period ends. Returns the new key id and
        when the previous key stops verifying (None: there was none)."""
        _, ring = await self._add_key(tenant, retire=True)
        previous = ring.keys[1].retired_at + self._grace if len(ring.keys) > 1 and ring.keys[1].retired_at else None
        return ring.keys[0].kid, previous

    async def verification_key(self, kid: str) -> bytes:
        """The key ``kid`` names if it still verifies, else ``BadSignature``."""
        tenant = kid.rpartition(".")[0]
        for fresh in (False, True):
            _, ring = await self._ring(tenant, fresh=fresh)
            for key in ring.keys if ring is not None else ():
                if key.kid != kid:
                    continue
                if key.retired_at is not None and utcnow() > key.retired_at + self._grace:
                    raise BadSignature("the URL was signed with a key retired past its grace period")
                return self._master.open(key.envelope, key_context(tenant, kid))
        raise BadSignature("the URL was signed with an unknown key")

    async def rewrap_all(self) -> int:
        """Rewrap every key under the active master key (compare-and-set per tenant)."""
        count = 0
        try:
            tenants = await self._kv.keys()
        except NoKeysError:
            return 0
        for tenant in tenants:
            revision, ring = await self._ring(tenant, fresh=True)
            if ring is None or all(k.envelope.kid == self._master.active for k in ring.keys):
                continue
            try:
                keys = [
                    k.model_copy(update={"envelope": self._master.rewrap(k.envelope, key_context(tenant, k.kid))})
                    for k in ring.keys
                ]
            except SecretsError as exc:
                log.warning("signing_keys.not_rewrapped", tenant=tenant, error=exc.message)
                continue
            try:
                await self._kv.update(tenant, encode(ring.model_copy(update={"keys": keys})), last=revision)
            except KeyWrongLastSequenceError:
                continue
            count += 1
        return count

    async def _add_key(self, tenant: str, *, retire: bool = False) -> tuple[int, SigningKeyRing]:
        while True:
            revision, ring = await self._ring(tenant, fresh=True)
            if ring is not None and ring.keys and ring.keys[0].retired_at is None and not retire:
                return revision, ring  # another gateway made one meanwhile
            now = utcnow()
            kid = f"{tenant}.{secrets.token_hex(6)}"
            new = SigningKey(kid=kid, envelope=self._master.seal(secrets.token_bytes(32), key_context(tenant, kid)))
            # Keys past their grace period are dropped; the others are retired now (if not already).
            kept = [
                k if k.retired_at is not None else k.model_copy(update={"retired_at": now})
                for k in (ring.keys if ring is not None else [])
                if k.retired_at is None or now <= k.retired_at + self._grace
            ]
            updated = SigningKeyRing(tenant=tenant, keys=[new, *kept])
            try:
                if ring is None:
                    revision = await self._kv.create(tenant, encode(updated))
                else:
                    revision = await self._kv.update(tenant, encode(updated), last=revision)
            except KeyWrongLastSequenceError:
                continue
            self._cache[tenant] = (time.monotonic(), revision, updated)
            return revision, updated

    async def _ring(self, tenant: str, *, fresh: bool) -> tuple[int, SigningKeyRing | None]:
        cached = self._cache.get(tenant)
        if not fresh and cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1], cached[2]
        try:
            entry = await self._kv.get(tenant)
        except KeyNotFoundError:
            return 0, None
        if not entry.value:
            return entry.revision or 0, None
        ring = decode(SigningKeyRing, entry.value)
        self._cache[tenant] = (time.monotonic(), entry.revision or 0, ring)
        return entry.revision or 0, ring


def checked_expiry(expires_in: int, max_s: int) -> int:
    if not 1 <= expires_in <= max_s:
        raise InvalidRequest(f"expires_in must be between 1 and {max_s} seconds (signed_urls.max_expires_s)")
    return int(time.time()) + expires_in
