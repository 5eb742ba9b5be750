"""Who is calling: the :class:`Principal` a request acts as.

Authentication middleware puts the principal into the ASGI scope under
:data:`SCOPE_KEY`; handlers read it with :func:`principal` and scope every
resource to ``principal(request).tenant``. Without one in the scope (no
authentication configured, as on a developer's machine), a request acts as the
owner of the gateway's default tenant (``SOULBOX_TENANT``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from starlette.requests import HTTPConnection

SCOPE_KEY = "soulbox.principal"

Role = Literal["owner", "admin", "developer", "viewer"]


@dataclass(frozen=True, slots=True)
class Principal:
    """A tenant member (user, API key or machine client) with a role and, optionally, narrower scopes."""

    tenant: str
    subject: str  # user id, key id or OAuth2 client id; what audit records name as the actor
    role: Role = "owner"
    scopes: frozenset[str] = field(default_factory=frozenset)  # empty: everything the role allows
    key_id: str | None = None  # the API key's id (its visible prefix), when the caller used one
    operator: bool = False  # the platform operator (a key of gateway.api_keys, or anybody when none is required)


def principal(connection: HTTPConnection) -> Principal:
    """The principal of ``connection`` (an HTTP request or a WebSocket)."""
    found = connection.scope.get(SCOPE_KEY)
    if isinstance(found, Principal):
        return found
    # Read off the app state, not through .platform: modules it imports import this one.
    tenant: str = connection.app.state.platform.settings.tenant
    return Principal(tenant=tenant, subject="anonymous", operator=True)
