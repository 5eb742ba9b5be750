"""JWTs SoulBox signs (ES256) for OAuth2 machine clients, and the keys it signs them with.

The signing keys are EC P-256 private keys, each named by a ``kid`` (a
thumbprint of its public key) that every token carries in its header, so
keys can be rotated: all of them verify and appear in
``/.well-known/jwks.json``, the newest signs. They come from
``identity.signing_key_files`` (the first signs), or else from NATS KV,
where the first gateway to start creates one (create-only, so racing
gateways agree on it) and every gateway shares it; a rotation adds a key
under its kid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core.codec import encode
from soulbox.core.identity import SigningKeyRecord
from soulbox.core.settings import IdentitySettings
from soulbox.core.store import scan

ALGORITHM: Final = "ES256"
FIRST_KEY: Final = "first"
RELOAD_EVERY_S: Final = 10.0  # at most this often, an unknown kid makes the keys be read again


def kid_of(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")


def _load_pem(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("a JWT signing key must be an EC P-256 private key")
    return key


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified SoulBox token says."""

    subject: str  # the OAuth2 client id
    tenant: str
    role: str
    scopes: tuple[str, ...]
    expires_at: float


class SigningKeys:
    """The keys SoulBox signs and verifies its JWTs with."""

    def __init__(self, settings: IdentitySettings, kv: KeyValue) -> None:
        self._settings = settings
        self._kv = kv
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._signing: str | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the keys (files, or KV, creating the first key there when there is none)."""
        async with self._lock:
            if self._settings.signing_key_files:
                keys = [_load_pem(path.read_bytes()) for path in self._settings.signing_key_files]
                self._keys = {kid_of(k): k for k in keys}
                self._signing = kid_of(keys[0])
            else:
                records = [r async for _, r in scan(self._kv, ">", SigningKeyRecord)]
                if not records:
                    key = ec.generate_private_key(ec.SECP256R1())
                    record = SigningKeyRecord(kid=kid_of(key), private_pem=_pem(key))
                    # Under a fixed name, create-only: of gateways starting together, one key wins.
                    with contextlib.suppress(KeyWrongLastSequenceError):
                        await self._kv.create(FIRST_KEY, encode(record))
                    records = [r async for _, r in scan(self._kv, ">", SigningKeyRecord)]
                records.sort(key=lambda r: (r.created_at, r.kid))
                self._keys = {r.kid: _load_pem(r.private_pem.encode()) for r in records}
                self._signing = records[-1].kid  # the newest: a rotation adds a key under its kid
            self._loaded_at = time.monotonic()

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWK Set."""
        keys = []
        for kid, key in self._keys.items():
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            assert isinstance(jwk, dict)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": keys}

    def issue(self, *, subject: str, tenant: str, role: str, scopes: tuple[str, ...], ttl_s: int) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds."""
        assert self._signing is not None, "load() first"
        now = int(time.time())
        claims = {
            "iss": self._settings.issuer,
            "aud": self._settings.issuer,
            "sub": subject,
            "tenant": tenant,
            "role": role,
            "scope": " ".join(scopes),
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(12),
        }
        token = jwt.encode(claims, self._keys[self._signing], algorithm=ALGORITHM, headers={"kid": self._signing})
        return token, ttl_s

    async def verify(self, token: str) -> TokenClaims:
        """The claims of a token SoulBox signed; ``jwt.InvalidTokenError`` when it is not one, or expired."""
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str):
            raise jwt.InvalidTokenError("the token names no key (kid)")
        key = self._keys.get(kid)
        if key is None and not self._settings.signing_key_files and time.monotonic() - self._loaded_at > RELOAD_EVERY_S:
            await self.load()  # a key another gateway added since we read them
            key = self._keys.get(kid)
        if key is None:
            raise jwt.InvalidTokenError(f"unknown signing key {kid!r}")
        claims = jwt.decode(
            token,
            key.public_key(),
            algorithms=[ALGORITHM],
            audience=self._settings.issuer,
            issuer=self._settings.issuer,
            leeway=self._settings.leeway_s,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        tenant, role, scope = claims.get("tenant"), claims.get("role"), claims.get("scope", "")
        if not isinstance(tenant, str) or not isinstance(role, str) or not isinstance(scope, str):
            raise jwt.InvalidTokenError("the token lacks its tenant or role")
        return TokenClaims(str(claims["sub"]), tenant, role, tuple(scope.split()), float(claims["exp"]))
