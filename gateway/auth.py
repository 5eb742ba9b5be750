"""The authentication and authorization gate: one place, in front of every route.

Pure ASGI middleware (HTTP and WebSocket). For each request it finds the
route, and then:

- public routes (health, OpenAPI, metrics, JWKS, the token endpoint) pass;
- webhooks and HTTP-route triggers carry no caller identity: the tenant in
  their URL (``/v1/hooks/{tenant}/…``, ``/run/{tenant}/…``) is the principal's;
- everything else needs a credential (see :mod:`.identity.authn`) unless
  none are configured, then the permission of the route
  (:mod:`.identity.rbac`) is checked against the principal's role and scopes:
  401 ``unauthenticated`` (or a more precise code: ``key_revoked``,
  ``key_expired``, ``token_expired``…), 403 ``forbidden``.
- a tenant named by the request (``{tenant}`` in the path, ``?tenant=``,
  ``X-Soulbox-Tenant``) other than the principal's is a 404
  ``tenant_not_found``, except for the platform operator, who then acts as it.

A request whose scope already holds a principal (a signed URL, verified by
its own middleware) is left alone. E2B's paths answer in E2B's error shape;
a refused WebSocket is closed before its upgrade with code 4000 + status.
Every refusal says why in ``scope[AUTH_FAILURE_KEY]``, which the audit
record of the request carries (:mod:`.middleware`).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from soulbox.core.errors import Forbidden, NotFound, SoulboxError, Unavailable
from soulbox.core.logging import get_logger
from soulbox.core.schemas import NAME_RE, checked_name

from .errors import error_response, status_of
from .identity.authn import Authenticated, Authenticator, AuthFailure, bearer
from .identity.rbac import PUBLIC, ROUTES, TENANT_PUBLIC, allowed, is_e2b, permission_of
from .middleware import AUTH_FAILURE_KEY, audit_websocket_refusal
from .principal import SCOPE_KEY, Principal

log = get_logger(__name__)


class TenantNotFound(NotFound):
    code = "tenant_not_found"


def _match(scope: Scope) -> tuple[str | None, dict[str, Any], bool]:
    """The matched route's template, its path parameters, and whether the method matched too."""
    partial: tuple[str | None, dict[str, Any], bool] = (None, {}, False)
    for route in scope["app"].routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "")), child.get("path_params", {}), True
        if match is Match.PARTIAL and partial[0] is None:
            partial = (str(getattr(route, "path", "")), child.get("path_params", {}), False)
    return partial


class AuthGate:
    """Authenticates and authorizes every request before any handler runs (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or isinstance(scope.get(SCOPE_KEY), Principal):
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator | None = getattr(scope["app"].state, "authenticator", None)
        template, params, method_matched = _match(scope)
        if template in PUBLIC:
            await self.app(scope, receive, send)
            return
        if authenticator is None:  # not started (or stopping): refuse rather than let anything through
            await self._refuse(scope, receive, send, Unavailable("the gateway is not ready"), template)
            return
        if template in TENANT_PUBLIC:
            tenant = str(params.get("tenant", ""))
            if not NAME_RE.match(tenant):
                await self._refuse(scope, receive, send, TenantNotFound(f"tenant {tenant!r} does not exist"), None)
                return
            scope[SCOPE_KEY] = Principal(tenant=tenant, subject="public", role="viewer")
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if template is None and not path.startswith("/v1/"):
            await self.app(scope, receive, send)  # not an API path: the router answers 404
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        who: Authenticated | None = None
        try:
            who = await self._authenticate(scope, headers, authenticator)
            named = (params.get("tenant"), _query(scope, "tenant"), headers.get("x-soulbox-tenant"))
            principal = _acting(who, [t for t in named if t])
            if template is not None and method_matched:
                method = "WEBSOCKET" if scope["type"] == "websocket" else scope["method"]
                permission = permission_of(method, template)
                if not who.operator and not allowed(principal, permission):
                    raise Forbidden(f"role {principal.role} with these scopes does not allow {permission}")
        except SoulboxError as exc:
            if who is not None:
                scope[SCOPE_KEY] = who.principal  # the audit record names who was refused
            await self._refuse(scope, receive, send, exc, template)
            return
        scope[SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _authenticate(scope: Scope, headers: dict[str, str], authenticator: Authenticator) -> Authenticated:
        credential = headers.get("x-api-key") or bearer(headers.get("authorization"))
        if credential is None and scope["type"] == "websocket":
            credential = _query(scope, "api_key")  # browsers cannot set a WebSocket's headers
        who = await authenticator.authenticate(credential)
        if who is None:
            if authenticator.required:
                raise AuthFailure("unauthenticated", "credentials are required (X-API-KEY or Authorization: Bearer)")
            who = authenticator.anonymous()
        return who

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, exc: SoulboxError, template: str | None
    ) -> None:
        status = status_of(exc)
        scope[AUTH_FAILURE_KEY] = {
            "code": exc.code,
            "tenant": getattr(exc, "tenant", None),
            "key_id": getattr(exc, "key_id", None),
        }
        log.info("auth.refused", code=exc.code, status=status, path=scope["path"])
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 4000 + status, "reason": f"{exc.code}: {exc.message}"[:120]})
            await audit_websocket_refusal(scope, status, template or scope["path"])
            return
        headers = {"WWW-Authenticate": 'Bearer realm="soulbox"'} if status == 401 else None
        if template is not None and is_e2b(template):
            body = {"code": status, "message": exc.message, "error_code": exc.code}
            await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
            return
        await error_response(status, exc.code, exc.message, headers=headers)(scope, receive, send)


def _acting(who: Authenticated, named: list[str]) -> Principal:
    """The principal, acting as the tenant the request names if it is the operator; 404 for anybody else."""
    principal = who.principal
    if len(set(named)) > 1:
        raise TenantNotFound(f"the request names several tenants: {', '.join(sorted(set(named)))}")
    for tenant in named:
        if tenant == principal.tenant:
            continue
        if not who.operator:
            raise TenantNotFound(f"tenant {tenant!r} does not exist")
        checked_name(tenant, what="tenant")
        principal = dataclasses.replace(principal, tenant=tenant)
    return principal


def _query(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def unlisted_routes(routes: list[Any]) -> list[str]:
    """Routes of the app missing from the permission table (the operator's only, until they are added)."""
    out = []
    for route in routes:
        template = str(getattr(route, "path", ""))
        if template in PUBLIC or template in TENANT_PUBLIC or is_e2b(template):
            continue
        methods = getattr(route, "methods", None) or {"WEBSOCKET"}
        out += [f"{m} {template}" for m in sorted(methods) if m != "HEAD" and (m, template) not in ROUTES]
    return out
