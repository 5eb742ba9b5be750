"""Identity records kept in NATS KV: tenants, users, API keys, OAuth2 clients and JWT signing keys.

Secrets are never stored: an API key or client secret is 256 random bits,
shown once, and kept as its SHA-256 (a slow KDF buys nothing for secrets
that cannot be guessed). Keys and clients are revoked by marking them, so
the audit log's key ids still resolve to who they were.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import Field

from .schemas import Message, Name, utcnow

Role = Literal["owner", "admin", "developer", "viewer"]
ROLE_RANK: Final[dict[str, int]] = {"viewer": 0, "developer": 1, "admin": 2, "owner": 3}


class TenantRecord(Message):
    """A tenant (team): every resource belongs to exactly one."""

    name: Name
    display_name: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = None


class UserRecord(Message):
    """A person: an identity at an external OIDC issuer (``issuer`` + ``subject``) with a role in a tenant."""

    id: str
    tenant: Name
    issuer: str
    subject: str
    email: str | None = None
    role: Role = "viewer"
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = None


class ApiKeyRecord(Message):
    """An API key ``sb_<id>_<secret>``: the id is visible (logs, audit), the secret only as its SHA-256."""

    id: str
    tenant: Name
    name: str = ""
    role: Role
    scopes: tuple[str, ...] = ()  # empty: everything the role allows
    secret_sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class OAuthClientRecord(Message):
    """A machine client of the OAuth2 client-credentials grant."""

    id: str
    tenant: Name
    name: str = ""
    role: Role
    scopes: tuple[str, ...] = ()
    secret_sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = None
    revoked_at: datetime | None = None


class SigningKeyRecord(Message):
    """A private key SoulBox signs JWTs with (PEM, EC P-256), named by its ``kid``."""

    kid: str
    private_pem: str
    created_at: datetime = Field(default_factory=utcnow)
