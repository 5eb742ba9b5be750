"""Tokens of external OpenID Connect issuers, verified with the issuer's JWKS.

Each configured issuer (``identity.oidc_issuers``) publishes its public keys
at ``jwks_url``; they are fetched with httpx, kept for ``jwks_cache_s``, and
fetched again early when a token names a key id not in them (a rotation),
at most every :data:`REFETCH_EVERY_S`. Only asymmetric algorithms are
accepted, and only the one the key is for: no ``none``, no HMAC with a
public key as its secret.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx
import jwt

from soulbox.core.logging import get_logger
from soulbox.core.settings import IdentitySettings, OidcIssuerSettings

log = get_logger(__name__)

ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
REFETCH_EVERY_S: Final = 10.0
FETCH_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class ExternalClaims:
    """A verified external token: who (issuer + subject) and for which tenant."""

    issuer: str
    subject: str
    tenant: str | None
    expires_at: float


class _Jwks:
    def __init__(self, issuer: OidcIssuerSettings, http: httpx.AsyncClient, ttl_s: float) -> None:
        self.issuer = issuer
        self._http = http
        self._ttl_s = ttl_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._ttl_s
        unknown = kid not in self._keys and now - self._fetched_at > REFETCH_EVERY_S
        if stale or unknown:
            async with self._lock:
                if self._fetched_at < now:  # nobody fetched while we waited
                    await self._fetch()
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        try:
            response = await self._http.get(self.issuer.jwks_url, timeout=FETCH_TIMEOUT_S)
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            keys: dict[str, jwt.PyJWK] = {}
            for raw in data.get("keys", []):
                if isinstance(raw, dict) and isinstance(raw.get("kid"), str) and raw.get("use", "sig") == "sig":
                    try:
                        keys[raw["kid"]] = jwt.PyJWK(raw)
                    except jwt.PyJWKError as exc:
                        log.warning("oidc.jwk_skipped", issuer=self.issuer.issuer, kid=raw["kid"], error=str(exc))
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the keys we had: an issuer's short outage must not log everybody out.
            log.warning("oidc.jwks_unavailable", issuer=self.issuer.issuer, error=str(exc))
            self._fetched_at = time.monotonic() - self._ttl_s + REFETCH_EVERY_S
            return
        self._keys = keys
        self._fetched_at = time.monotonic()


class ExternalIssuers:
    """The configured OIDC issuers, by ``iss``."""

    def __init__(self, settings: IdentitySettings) -> None:
        self._settings = settings
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._issuers = {i.issuer: _Jwks(i, self._http, settings.jwks_cache_s) for i in settings.oidc_issuers}

    def knows(self, issuer: object) -> bool:
        return isinstance(issuer, str) and issuer in self._issuers

    async def verify(self, token: str, issuer: str) -> ExternalClaims:
        """The claims of a token of ``issuer`` (one of ours: see :meth:`knows`); ``jwt.InvalidTokenError`` else."""
        jwks = self._issuers[issuer]
        header = jwt.get_unverified_header(token)
        kid, algorithm = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or algorithm not in ALGORITHMS:
            raise jwt.InvalidTokenError("the token names no key, or an algorithm that is not accepted")
        key = await jwks.key(kid)
        if key is None:
            raise jwt.InvalidTokenError(f"issuer {issuer} has no key {kid!r}")
        if key.algorithm_name != algorithm:
            raise jwt.InvalidTokenError(f"key {kid!r} is not for {algorithm}")
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[algorithm],
            audience=jwks.issuer.audience,
            issuer=issuer,
            leeway=self._settings.leeway_s,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        tenant = jwks.issuer.tenant or claims.get(jwks.issuer.tenant_claim)
        return ExternalClaims(
            issuer=issuer,
            subject=str(claims["sub"]),
            tenant=tenant if isinstance(tenant, str) else None,
            expires_at=float(claims["exp"]),
        )

    async def aclose(self) -> None:
        await self._http.aclose()
