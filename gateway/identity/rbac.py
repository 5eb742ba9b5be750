"""Who may do what: roles, permissions and the one table that gives every route its permission.

A permission is ``<resource>:<action>``; a role is a set of permissions
(viewer ⊂ developer ⊂ admin ⊂ owner); a key's or token's scopes narrow its
role further (``functions:*`` names every action on a resource). The
authentication gate (:mod:`soulbox.gateway.auth`) looks up the permission of
the matched route here and checks it, so no handler checks roles itself.
A route missing from the table is the platform operator's only (fail closed),
and logged when the gateway starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from soulbox.core.errors import InvalidRequest
from soulbox.core.identity import ROLE_RANK

from ..principal import Principal, Role

VIEWER: Final = frozenset(
    {
        "functions:read",
        "invocations:read",
        "triggers:read",
        "deadletters:read",
        "sandboxes:read",
        "usage:read",
        "audit:read",
        "secrets:read",
    }
)
DEVELOPER: Final = VIEWER | {
    "functions:write",
    "functions:invoke",
    "triggers:write",
    "deadletters:write",
    "sandboxes:write",
    "secrets:write",
}
ADMIN: Final = DEVELOPER | {"keys:read", "keys:write", "urlkeys:rotate", "users:read", "users:write", "tenant:export"}
OWNER: Final = ADMIN | {"tenant:delete"}
OPERATOR_ONLY: Final = frozenset({"tenants:manage"})
"""Held by the platform operator (a key in ``gateway.api_keys``) and no tenant role."""

ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "viewer": VIEWER,
    "developer": DEVELOPER,
    "admin": ADMIN,
    "owner": OWNER,
}
PERMISSIONS: Final = OWNER | OPERATOR_ONLY

PUBLIC: Final = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/metrics", "/.well-known/jwks.json", "/oauth/token"}
)
"""Routes anyone may call."""
TENANT_PUBLIC: Final = frozenset({"/v1/hooks/{tenant}/{trigger_id}", "/run/{tenant}/{path:path}"})
"""Routes without a caller identity (signed webhooks, public HTTP triggers): the tenant is in the URL."""

_SANDBOX = "/v1/sandboxes/{sandbox_id}"
_FUNCTION = "/v1/functions/{name}"
_ALIAS = "/v1/functions/{name}/aliases/{alias}"

ROUTES: Final[dict[tuple[str, str], str]] = {
    ("POST", "/v1/functions"): "functions:write",
    ("GET", "/v1/functions"): "functions:read",
    ("GET", _FUNCTION): "functions:read",
    ("DELETE", _FUNCTION): "functions:write",
    ("POST", f"{_FUNCTION}/invoke"): "functions:invoke",
    ("GET", f"{_FUNCTION}/versions"): "functions:read",
    ("GET", f"{_FUNCTION}/aliases"): "functions:read",
    ("PUT", _ALIAS): "functions:write",
    ("DELETE", _ALIAS): "functions:write",
    ("POST", f"{_ALIAS}/rollback"): "functions:write",
    ("GET", "/v1/invocations/{invocation_id}"): "invocations:read",
    ("GET", "/v1/invocations/{invocation_id}/logs"): "invocations:read",
    ("GET", "/v1/usage"): "usage:read",
    ("GET", "/v1/limits"): "usage:read",
    ("GET", "/v1/audit"): "audit:read",
    ("GET", "/v1/audit/verify"): "audit:read",
    ("GET", "/v1/tenants"): "tenants:manage",
    ("POST", "/v1/tenants"): "tenants:manage",
    ("GET", "/v1/tenants/{tenant}/export"): "tenant:export",
    ("DELETE", "/v1/tenants/{tenant}/data"): "tenant:delete",
    ("POST", "/v1/triggers"): "triggers:write",
    ("GET", "/v1/triggers"): "triggers:read",
    ("GET", "/v1/triggers/{trigger_id}"): "triggers:read",
    ("PUT", "/v1/triggers/{trigger_id}"): "triggers:write",
    ("DELETE", "/v1/triggers/{trigger_id}"): "triggers:write",
    ("GET", "/v1/dead-letters"): "deadletters:read",
    ("POST", "/v1/dead-letters/{invocation_id}/replay"): "deadletters:write",
    ("POST", "/v1/sandboxes"): "sandboxes:write",
    ("GET", "/v1/sandboxes"): "sandboxes:read",
    ("GET", _SANDBOX): "sandboxes:read",
    ("DELETE", _SANDBOX): "sandboxes:write",
    ("POST", f"{_SANDBOX}/timeout"): "sandboxes:write",
    ("POST", f"{_SANDBOX}/pause"): "sandboxes:write",
    ("POST", f"{_SANDBOX}/resume"): "sandboxes:write",
    ("GET", f"{_SANDBOX}/metrics"): "sandboxes:read",
    ("GET", f"{_SANDBOX}/logs"): "sandboxes:read",
    ("GET", f"{_SANDBOX}/files"): "sandboxes:read",
    ("POST", f"{_SANDBOX}/files"): "sandboxes:write",
    ("WEBSOCKET", f"{_SANDBOX}/pty"): "sandboxes:write",  # a shell in the sandbox
    ("POST", "/v1/api-keys"): "keys:write",
    ("GET", "/v1/api-keys"): "keys:read",
    ("GET", "/v1/api-keys/{key_id}"): "keys:read",
    ("DELETE", "/v1/api-keys/{key_id}"): "keys:write",
    ("POST", "/v1/oauth-clients"): "keys:write",
    ("GET", "/v1/oauth-clients"): "keys:read",
    ("DELETE", "/v1/oauth-clients/{client_id}"): "keys:write",
    ("POST", "/v1/users"): "users:write",
    ("GET", "/v1/users"): "users:read",
    ("GET", "/v1/users/{user_id}"): "users:read",
    ("DELETE", "/v1/users/{user_id}"): "users:write",
    ("GET", "/v1/whoami"): "any",
    ("GET", "/v1/secrets"): "secrets:read",
    ("GET", "/v1/secrets/{name}"): "secrets:read",
    ("PUT", "/v1/secrets/{name}"): "secrets:write",
    ("DELETE", "/v1/secrets/{name}"): "secrets:write",
    ("POST", "/v1/signed-urls"): "any",  # the signer must hold the signed action's own permission (signed.py)
    ("POST", "/v1/signed-urls/rotate"): "urlkeys:rotate",
}

E2B_PREFIXES: Final = ("/sandboxes", "/v2/sandboxes")
"""E2B's control API (the SDK's paths): reads need ``sandboxes:read``, everything else ``sandboxes:write``."""

ANY: Final = "any"
"""The permission of routes every authenticated caller may use (``/v1/whoami``)."""
FALLBACK: Final = "owner:unlisted-route"
"""The permission of a route missing from :data:`ROUTES`: no role and no scope grants it (only the operator)."""


def is_e2b(template: str) -> bool:
    return template.startswith(E2B_PREFIXES)


def permission_of(method: str, template: str) -> str:
    """The permission a request to ``template`` with ``method`` needs (HEAD is GET)."""
    if is_e2b(template):
        return "sandboxes:read" if method in ("GET", "HEAD") else "sandboxes:write"
    found = ROUTES.get(("GET" if method == "HEAD" else method, template))
    return found if found is not None else FALLBACK


def _covers(scope: str, permission: str) -> bool:
    resource, _, action = scope.partition(":")
    return scope == permission or (action == "*" and permission.startswith(resource + ":"))


def allowed(principal: Principal, permission: str) -> bool:
    """Whether ``principal``'s role grants ``permission`` and its scopes (if any) include it."""
    if permission == ANY:
        return True
    if permission not in ROLE_PERMISSIONS[principal.role]:
        return False
    return not principal.scopes or any(_covers(s, permission) for s in principal.scopes)


def effective(role: Role, scopes: Iterable[str]) -> frozenset[str]:
    """The permissions a role narrowed by scopes grants."""
    granted = ROLE_PERMISSIONS[role]
    wanted = list(scopes)
    if not wanted:
        return granted
    return frozenset(p for p in granted if any(_covers(s, p) for s in wanted))


def checked_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` sorted and de-duplicated, or ``InvalidRequest`` naming one that is not a permission."""
    resources = {p.partition(":")[0] for p in OWNER}
    out: set[str] = set()
    for scope in scopes:
        resource, _, action = scope.partition(":")
        if scope not in OWNER and not (action == "*" and resource in resources):
            raise InvalidRequest(f"unknown scope {scope!r}; scopes are permissions such as functions:read")
        out.add(scope)
    return tuple(sorted(out))


def may_grant(granter: Principal, role: Role, scopes: Iterable[str], *, operator: bool) -> bool:
    """Whether ``granter`` may hand out a credential with ``role`` and ``scopes``: never more than it has."""
    if operator:
        return True
    if ROLE_RANK[role] > ROLE_RANK[granter.role]:
        return False
    return effective(role, scopes) <= effective(granter.role, granter.scopes)
