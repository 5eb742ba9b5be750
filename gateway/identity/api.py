"""Identity endpoints: tenants, API keys, OAuth2 clients, users, the token endpoint and the JWKS.

A secret (an API key, a client secret) is in the response that creates it
and nowhere else, ever. Nobody hands out a credential worth more than their
own (role and scopes, :func:`rbac.may_grant`). Every lookup is within the
caller's tenant, so another tenant's key or user is a 404 like an unknown one.
Permissions are checked by the gate (:mod:`soulbox.gateway.auth`), not here.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from soulbox.core.errors import Forbidden, InvalidRequest, NotFound
from soulbox.core.identity import ApiKeyRecord, OAuthClientRecord, Role, TenantRecord, UserRecord
from soulbox.core.schemas import NAME_PATTERN, utcnow

from ..bodies import json_body, read_body
from ..middleware import AUTH_FAILURE_KEY
from ..principal import principal
from . import rbac
from .authn import Authenticator
from .store import IdentityStore, alive, secret_matches, user_id

MAX_JSON = 16 * 1024


def authenticator(request: Request) -> Authenticator:
    a: Authenticator = request.app.state.authenticator
    return a


def _store(request: Request) -> IdentityStore:
    return authenticator(request).store


async def _known_tenant(request: Request, tenant: str) -> None:
    """404 unless ``tenant`` was created (or is the gateway's default tenant)."""
    if tenant != authenticator(request).settings.tenant and await _store(request).tenant(tenant) is None:
        raise NotFound(f"tenant {tenant!r} does not exist", code="tenant_not_found")


def _grantable(request: Request, role: Role, scopes: tuple[str, ...]) -> None:
    if not rbac.may_grant(principal(request), role, scopes, operator=False):
        raise Forbidden("a credential cannot be given a role or scopes beyond the caller's own")


# Tenants ----------------------------------------------------------------------------------------


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    display_name: str = Field("", max_length=200)


def _key_out(record: ApiKeyRecord, key: str | None = None) -> dict[str, Any]:
    out = record.model_dump(mode="json", exclude={"v", "secret_sha256"})
    out["state"] = alive(record) or "active"
    if key is not None:
        out["key"] = key  # shown this once
    return out


async def create_tenant(request: Request) -> Response:
    """A tenant and its first owner key (shown once): the operator's way to hand a team its account."""
    given = await json_body(request, TenantIn, limit=MAX_JSON, what="tenant")
    store = _store(request)
    record = TenantRecord(name=given.name, display_name=given.display_name, created_by=principal(request).subject)
    await store.create_tenant(record)
    key, secret = await store.create_key(
        record.name, name="owner", role="owner", scopes=(), expires_at=None, created_by=principal(request).subject
    )
    body = {**record.model_dump(mode="json", exclude={"v"}), "owner_key": _key_out(key, secret)}
    return JSONResponse(body, status_code=201)


async def list_tenants(request: Request) -> Response:
    tenants = await _store(request).tenants()
    return JSONResponse({"tenants": [t.model_dump(mode="json", exclude={"v"}) for t in tenants]})


# API keys ---------------------------------------------------------------------------------------


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=200)
    role: Role | None = Field(None, description="default: the caller's role")
    scopes: list[str] = Field(default_factory=list, description="permissions the key is narrowed to")
    expires_in_s: int | None = Field(None, ge=1, le=10 * 365 * 86400)
    expires_at: datetime | None = None


async def create_key(request: Request) -> Response:
    given = await json_body(request, KeyIn, limit=MAX_JSON, what="API key")
    caller = principal(request)
    await _known_tenant(request, caller.tenant)
    role: Role = given.role or caller.role
    scopes = rbac.checked_scopes(given.scopes)
    _grantable(request, role, scopes)
    expires_at = given.expires_at
    if given.expires_in_s is not None:
        expires_at = utcnow() + timedelta(seconds=given.expires_in_s)
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidRequest("expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z)")
    record, key = await _store(request).create_key(
        caller.tenant, name=given.name, role=role, scopes=scopes, expires_at=expires_at, created_by=caller.subject
    )
    return JSONResponse(_key_out(record, key), status_code=201)


async def list_keys(request: Request) -> Response:
    keys = await _store(request).keys(principal(request).tenant)
    return JSONResponse({"api_keys": [_key_out(k) for k in keys]})


async def get_key(request: Request) -> Response:
    record = await _store(request).tenant_key(principal(request).tenant, request.path_params["key_id"])
    return JSONResponse(_key_out(record))


async def revoke_key(request: Request) -> Response:
    await _store(request).revoke_key(principal(request).tenant, request.path_params["key_id"])
    return Response(status_code=204)


# OAuth2 clients ----------------------------------------------------------------------------------


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=200)
    role: Role | None = None
    scopes: list[str] = Field(default_factory=list)


def _client_out(record: OAuthClientRecord, secret: str | None = None) -> dict[str, Any]:
    out = record.model_dump(mode="json", exclude={"v", "secret_sha256", "id"})
    out["client_id"] = record.id
    if secret is not None:
        out["client_secret"] = secret
    return out


async def create_client(request: Request) -> Response:
    given = await json_body(request, ClientIn, limit=MAX_JSON, what="OAuth client")
    caller = principal(request)
    await _known_tenant(request, caller.tenant)
    role: Role = given.role or caller.role
    scopes = rbac.checked_scopes(given.scopes)
    _grantable(request, role, scopes)
    record, secret = await _store(request).create_client(
        caller.tenant, name=given.name, role=role, scopes=scopes, created_by=caller.subject
    )
    return JSONResponse(_client_out(record, secret), status_code=201)


async def list_clients(request: Request) -> Response:
    clients = await _store(request).clients(principal(request).tenant)
    return JSONResponse({"oauth_clients": [_client_out(c) for c in clients]})


async def revoke_client(request: Request) -> Response:
    await _store(request).revoke_client(principal(request).tenant, request.path_params["client_id"])
    return Response(status_code=204)


# Users ---------------------------------------------------------------------------------------------


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    issuer: str = Field(min_length=1, max_length=500)
    subject: str = Field(min_length=1, max_length=500)
    email: str | None = Field(None, max_length=320)
    role: Role = "viewer"


async def create_user(request: Request) -> Response:
    given = await json_body(request, UserIn, limit=MAX_JSON, what="user")
    caller = principal(request)
    await _known_tenant(request, caller.tenant)
    if not authenticator(request).issuers.knows(given.issuer):
        raise InvalidRequest(f"issuer {given.issuer!r} is not configured (identity.oidc_issuers)")
    _grantable(request, given.role, ())
    record = UserRecord(
        id=user_id(given.issuer, given.subject),
        tenant=caller.tenant,
        issuer=given.issuer,
        subject=given.subject,
        email=given.email,
        role=given.role,
        created_by=caller.subject,
    )
    await _store(request).create_user(record)
    return JSONResponse(record.model_dump(mode="json", exclude={"v"}), status_code=201)


async def list_users(request: Request) -> Response:
    users = await _store(request).users(principal(request).tenant)
    return JSONResponse({"users": [u.model_dump(mode="json", exclude={"v"}) for u in users]})


async def get_user(request: Request) -> Response:
    record = await _store(request).tenant_user(principal(request).tenant, request.path_params["user_id"])
    return JSONResponse(record.model_dump(mode="json", exclude={"v"}))


async def delete_user(request: Request) -> Response:
    await _store(request).delete_user(principal(request).tenant, request.path_params["user_id"])
    return Response(status_code=204)


async def whoami(request: Request) -> Response:
    """Who the credential is: tenant, subject, role, scopes and what they allow."""
    who = principal(request)
    return JSONResponse(
        {
            "tenant": who.tenant,
            "subject": who.subject,
            "role": who.role,
            "scopes": sorted(who.scopes),
            "key_id": who.key_id,
            "permissions": sorted(rbac.effective(who.role, who.scopes)),
        }
    )


# OAuth2 token endpoint and JWKS ------------------------------------------------------------------


def _oauth_error(request: Request, status: int, error: str, description: str) -> JSONResponse:
    """RFC 6749 §5.2's error shape: OAuth2 client libraries parse it."""
    if status == 401:
        request.scope[AUTH_FAILURE_KEY] = {"code": error, "tenant": None, "key_id": None}
    headers = {"WWW-Authenticate": 'Basic realm="soulbox"'} if status == 401 else {}
    headers["Cache-Control"] = "no-store"
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=headers)


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """``client_secret_basic`` (HTTP Basic) or ``client_secret_post`` (form fields)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote(user), unquote(password)
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    return None


async def token(request: Request) -> Response:
    """``POST /oauth/token``, grant ``client_credentials``: a short-lived SoulBox JWT for a machine client."""
    raw = await read_body(request, MAX_JSON)
    form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(request, 400, "unsupported_grant_type", "only client_credentials is supported")
    given = _client_credentials(request, form)
    if given is None:
        return _oauth_error(request, 401, "invalid_client", "client authentication is required")
    auth = authenticator(request)
    client = await auth.store.client(given[0])
    if client is None or not secret_matches(given[1], client.secret_sha256) or client.revoked_at is not None:
        return _oauth_error(request, 401, "invalid_client", "unknown client, wrong secret or revoked client")
    scopes = client.scopes
    if form.get("scope"):
        asked = tuple(sorted(set(form["scope"].split())))
        try:
            rbac.checked_scopes(asked)
        except InvalidRequest as exc:
            return _oauth_error(request, 400, "invalid_scope", exc.message)
        has = rbac.effective(client.role, client.scopes)
        if not all(rbac.effective(client.role, [one]) & has for one in asked):
            return _oauth_error(request, 400, "invalid_scope", "the scope asked for is beyond the client's")
        scopes = asked
    access, ttl = auth.signing.issue(
        subject=client.id,
        tenant=client.tenant,
        role=client.role,
        scopes=scopes,
        ttl_s=auth.settings.identity.token_ttl_s,
    )
    body = {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": " ".join(scopes)}
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def jwks(request: Request) -> Response:
    return JSONResponse(authenticator(request).signing.jwks(), headers={"Cache-Control": "public, max-age=300"})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/tenants", create_tenant, methods=["POST"]),
        Route("/v1/tenants", list_tenants, methods=["GET"]),
        Route("/v1/api-keys", create_key, methods=["POST"]),
        Route("/v1/api-keys", list_keys, methods=["GET"]),
        Route("/v1/api-keys/{key_id}", get_key, methods=["GET"]),
        Route("/v1/api-keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/v1/oauth-clients", create_client, methods=["POST"]),
        Route("/v1/oauth-clients", list_clients, methods=["GET"]),
        Route("/v1/oauth-clients/{client_id}", revoke_client, methods=["DELETE"]),
        Route("/v1/users", create_user, methods=["POST"]),
        Route("/v1/users", list_users, methods=["GET"]),
        Route("/v1/users/{user_id}", get_user, methods=["GET"]),
        Route("/v1/users/{user_id}", delete_user, methods=["DELETE"]),
        Route("/v1/whoami", whoami, methods=["GET"]),
        # Protocol endpoints answer in their protocols' shapes (RFC 6749, RFC 7517): outside the OpenAPI document.
        Route("/oauth/token", token, methods=["POST"], include_in_schema=False),
        Route("/.well-known/jwks.json", jwks, methods=["GET"], include_in_schema=False),
    ]
