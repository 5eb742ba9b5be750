"""From credentials to a :class:`Principal`: operator keys, API keys, SoulBox JWTs and external OIDC tokens.

A credential comes in ``X-API-KEY`` (E2B's header) or ``Authorization:
Bearer``, or, for WebSockets where a browser cannot set headers, in
``?api_key=``. What it is decides how it is checked:

- one of ``gateway.api_keys``: the platform operator, owner of the default
  tenant who may act for any tenant (``X-Soulbox-Tenant`` / ``?tenant=``);
- ``sb_<id>_<secret>``: an API key, looked up by id, its secret compared
  (constant-time) with the stored digest, then its expiry and revocation;
- a JWT: signed by SoulBox (``iss`` = ``identity.issuer``: a client-credentials
  token, whose client must still exist unrevoked) or by a configured OIDC
  issuer (the subject must be a registered user of the token's tenant).

Every refusal is an :class:`AuthFailure` with a stable code, and the tenant
and key id when they are known, for the audit record.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final, cast

import jwt

from soulbox.core.errors import Unauthenticated
from soulbox.core.identity import ROLE_RANK
from soulbox.core.schemas import NAME_RE
from soulbox.core.settings import Settings

from ..principal import Principal, Role
from .oidc import ExternalIssuers
from .store import IdentityStore, alive, parse_key, secret_matches, user_id
from .tokens import SigningKeys

OPERATOR: Final = "operator"


class AuthFailure(Unauthenticated):
    """A credential was missing or refused; ``code`` says why (all are 401s)."""

    def __init__(self, code: str, message: str, *, tenant: str | None = None, key_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.tenant = tenant
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who a request acts as, and whether that is the platform operator (every tenant, every permission)."""

    principal: Principal
    operator: bool = False


def _role(value: str) -> Role:
    if value not in ROLE_RANK:
        raise jwt.InvalidTokenError(f"unknown role {value!r}")
    return cast(Role, value)


def bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    """Checks credentials; knows whether requests without any are refused (:attr:`required`)."""

    def __init__(
        self, settings: Settings, store: IdentityStore, signing: SigningKeys, issuers: ExternalIssuers
    ) -> None:
        self.settings = settings
        self.store = store
        self.signing = signing
        self.issuers = issuers
        # Digests, so that comparing them takes as long whatever the length of the key tried.
        self._operator_keys = [
            hashlib.sha256(k.get_secret_value().encode()).digest() for k in settings.gateway.api_keys
        ]
        self.required = bool(self._operator_keys) or settings.identity.required

    def anonymous(self) -> Authenticated:
        """A request without credentials where none are required: the operator (a developer's own machine)."""
        return Authenticated(Principal(tenant=self.settings.tenant, subject="anonymous"), operator=True)

    def _operator(self, credential: str) -> Authenticated | None:
        supplied = hashlib.sha256(credential.encode()).digest()
        found: int | None = None
        for index, key in enumerate(self._operator_keys):  # no early exit: every key is compared
            if hmac.compare_digest(supplied, key) and found is None:
                found = index
        if found is None:
            return None
        who = Principal(tenant=self.settings.tenant, subject=OPERATOR, role="owner", key_id=f"operator-{found}")
        return Authenticated(who, operator=True)

    async def authenticate(self, credential: str | None) -> Authenticated | None:
        """Who ``credential`` is (None: no credential given); :class:`AuthFailure` when it is refused."""
        if not credential:
            return None
        operator = self._operator(credential)
        if operator is not None:
            return operator
        if credential.count(".") == 2:
            return await self._token(credential)
        parsed = parse_key(credential)
        if parsed is None:
            raise AuthFailure("invalid_credentials", "invalid API key")
        return await self._api_key(*parsed)

    async def _api_key(self, key_id: str, secret: str) -> Authenticated:
        record = await self.store.key(key_id)
        if record is None or not secret_matches(secret, record.secret_sha256):
            raise AuthFailure("invalid_credentials", "invalid API key", key_id=key_id)
        why = alive(record)
        if why is not None:
            said = "revoked" if why == "key_revoked" else "expired"
            raise AuthFailure(why, f"API key {key_id} is {said}", tenant=record.tenant, key_id=key_id)
        who = Principal(record.tenant, f"key:{key_id}", record.role, frozenset(record.scopes), key_id=key_id)
        return Authenticated(who)

    async def _token(self, token: str) -> Authenticated:
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            if issuer == self.settings.identity.issuer:
                return await self._own_token(token)
            if self.issuers.knows(issuer):
                return await self._external_token(token, cast(str, issuer))
        except jwt.ExpiredSignatureError:
            raise AuthFailure("token_expired", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthFailure("invalid_token", f"invalid token: {exc}") from None
        raise AuthFailure("invalid_token", "the token's issuer is not one this gateway accepts")

    async def _own_token(self, token: str) -> Authenticated:
        claims = await self.signing.verify(token)
        client = await self.store.client(claims.subject)
        if client is None or client.tenant != claims.tenant or client.revoked_at is not None:
            raise AuthFailure("client_revoked", "the token's OAuth client is revoked", tenant=claims.tenant)
        role = _role(claims.role)
        if ROLE_RANK[role] > ROLE_RANK[client.role]:
            raise AuthFailure("invalid_token", "the token claims more than its client has", tenant=claims.tenant)
        who = Principal(claims.tenant, f"client:{client.id}", role, frozenset(claims.scopes), key_id=client.id)
        return Authenticated(who)

    async def _external_token(self, token: str, issuer: str) -> Authenticated:
        claims = await self.issuers.verify(token, issuer)
        if claims.tenant is None or not NAME_RE.match(claims.tenant):
            raise AuthFailure("invalid_token", "the token names no tenant")
        user = await self.store.user(claims.tenant, user_id(claims.issuer, claims.subject))
        if user is None:
            raise AuthFailure("unknown_user", "the token's subject is not a user of its tenant", tenant=claims.tenant)
        return Authenticated(Principal(user.tenant, f"user:{user.id}", user.role, key_id=None))
