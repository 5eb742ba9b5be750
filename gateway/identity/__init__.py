"""Tenants, users, API keys, JWTs and RBAC: who a request is, and what it may do.

:func:`open_identity` builds the :class:`Authenticator` the gateway's gate uses
(:mod:`soulbox.gateway.auth`); the endpoints are in :mod:`.api`, the
permission table in :mod:`.rbac`.
"""

from __future__ import annotations

from soulbox.core.bus import Buckets
from soulbox.core.settings import Settings

from .authn import Authenticated, Authenticator, AuthFailure
from .oidc import ExternalIssuers
from .store import IdentityStore
from .tokens import SigningKeys


async def open_identity(settings: Settings, buckets: Buckets) -> Authenticator:
    """The authenticator, with SoulBox's signing keys loaded; ``aclose()`` its issuers when done."""
    signing = SigningKeys(settings.identity, buckets.jwt_keys)
    await signing.load()
    return Authenticator(settings, IdentityStore(buckets), signing, ExternalIssuers(settings.identity))


__all__ = ["AuthFailure", "Authenticated", "Authenticator", "IdentityStore", "SigningKeys", "open_identity"]
