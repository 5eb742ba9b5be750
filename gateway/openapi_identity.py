"""OpenAPI operations of the identity endpoints: tenants, API keys, OAuth2 clients, users and whoami.

The token endpoint (``POST /oauth/token``) and the JWKS answer in their own
protocols' shapes (RFC 6749, RFC 7517) and are not in the document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from soulbox.core.identity import Role

from .identity.api import ClientIn, KeyIn, TenantIn, UserIn
from .openapi_parts import error, json_body, json_response, path_param


class ApiKeyOut(BaseModel):
    """An API key as listed: never its secret."""

    id: str = Field(description="the key's visible id: `sb_<id>_<secret>`")
    tenant: str
    name: str
    role: Role
    scopes: list[str]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    state: str = Field(description="`active`, `key_expired` or `key_revoked`")


class ApiKeyCreated(ApiKeyOut):
    """A new API key: ``key`` is shown in this response only."""

    key: str


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyOut]


class TenantOut(BaseModel):
    name: str
    display_name: str
    created_at: datetime
    created_by: str | None


class TenantCreated(TenantOut):
    """A new tenant and its first owner key (shown in this response only)."""

    owner_key: ApiKeyCreated


class TenantList(BaseModel):
    tenants: list[TenantOut]


class OAuthClientOut(BaseModel):
    client_id: str
    tenant: str
    name: str
    role: Role
    scopes: list[str]
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None


class OAuthClientCreated(OAuthClientOut):
    """A new client: ``client_secret`` is shown in this response only."""

    client_secret: str


class OAuthClientList(BaseModel):
    oauth_clients: list[OAuthClientOut]


class UserOut(BaseModel):
    id: str
    tenant: str
    issuer: str
    subject: str
    email: str | None
    role: Role
    created_at: datetime
    created_by: str | None


class UserList(BaseModel):
    users: list[UserOut]


class WhoAmI(BaseModel):
    tenant: str
    subject: str
    role: Role
    scopes: list[str]
    key_id: str | None
    permissions: list[str]


MODELS: list[type[BaseModel]] = [
    TenantIn,
    TenantOut,
    TenantCreated,
    TenantList,
    KeyIn,
    ApiKeyOut,
    ApiKeyCreated,
    ApiKeyList,
    ClientIn,
    OAuthClientOut,
    OAuthClientCreated,
    OAuthClientList,
    UserIn,
    UserOut,
    UserList,
    WhoAmI,
]

_FORBIDDEN = error("the role or scopes of the credential do not allow this", "forbidden")
_GRANT = error("the role or scopes of the credential do not allow this, or exceed the caller's own", "forbidden")
_KEY_ID = path_param("key_id", pattern="^[0-9a-f]{12}$")
_CLIENT_ID = path_param("client_id", pattern="^sbc_[0-9a-f]{16}$")
_USER_ID = path_param("user_id", pattern="^[0-9a-f]{24}$")


def _created(
    body: type[BaseModel], out: type[BaseModel], summary: str, *extra: tuple[str, dict[str, Any]]
) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": json_body(body, limit="16 KiB"),
        "responses": {
            "201": json_response(out, "created; the secret is in this response only"),
            "400": error("invalid body or unknown scope", "invalid_request"),
            "403": _GRANT,
            **dict(extra),
        },
    }


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/tenants", "post"): _created(
        TenantIn,
        TenantCreated,
        "Create a tenant (platform operator only) and its first owner key",
        ("409", error("the tenant exists", "conflict")),
    ),
    ("/v1/tenants", "get"): {
        "summary": "Every tenant (platform operator only)",
        "responses": {"200": json_response(TenantList, "the tenants, by name"), "403": _FORBIDDEN},
    },
    ("/v1/api-keys", "post"): _created(
        KeyIn,
        ApiKeyCreated,
        "Create an API key of the caller's tenant: a role (at most the caller's), scopes, an expiry",
        ("404", error("the tenant was not created", "tenant_not_found")),
    ),
    ("/v1/api-keys", "get"): {
        "summary": "The tenant's API keys, without their secrets",
        "responses": {"200": json_response(ApiKeyList, "oldest first"), "403": _FORBIDDEN},
    },
    ("/v1/api-keys/{key_id}", "get"): {
        "summary": "One API key of the tenant",
        "parameters": [_KEY_ID],
        "responses": {
            "200": json_response(ApiKeyOut, "the key, without its secret"),
            "403": _FORBIDDEN,
            "404": error("no such key in this tenant", "api_key_not_found"),
        },
    },
    ("/v1/api-keys/{key_id}", "delete"): {
        "summary": "Revoke an API key: refused from now on (401 `key_revoked`); its record stays for the audit log",
        "parameters": [_KEY_ID],
        "responses": {
            "204": {"description": "revoked"},
            "403": _FORBIDDEN,
            "404": error("no such key in this tenant", "api_key_not_found"),
        },
    },
    ("/v1/oauth-clients", "post"): _created(
        ClientIn,
        OAuthClientCreated,
        "Create an OAuth2 client-credentials client (POST /oauth/token gives it short-lived JWTs)",
        ("404", error("the tenant was not created", "tenant_not_found")),
    ),
    ("/v1/oauth-clients", "get"): {
        "summary": "The tenant's OAuth2 clients, without their secrets",
        "responses": {"200": json_response(OAuthClientList, "oldest first"), "403": _FORBIDDEN},
    },
    ("/v1/oauth-clients/{client_id}", "delete"): {
        "summary": "Revoke an OAuth2 client: its tokens are refused from now on (401 `client_revoked`)",
        "parameters": [_CLIENT_ID],
        "responses": {
            "204": {"description": "revoked"},
            "403": _FORBIDDEN,
            "404": error("no such client in this tenant", "oauth_client_not_found"),
        },
    },
    ("/v1/users", "post"): _created(
        UserIn,
        UserOut,
        "Register a person of a configured OIDC issuer (issuer + subject) with a role in the tenant",
        ("404", error("the tenant was not created", "tenant_not_found")),
        ("409", error("the person is registered in this tenant", "conflict")),
    ),
    ("/v1/users", "get"): {
        "summary": "The tenant's users",
        "responses": {"200": json_response(UserList, "oldest first"), "403": _FORBIDDEN},
    },
    ("/v1/users/{user_id}", "get"): {
        "summary": "One user of the tenant",
        "parameters": [_USER_ID],
        "responses": {
            "200": json_response(UserOut, "the user"),
            "403": _FORBIDDEN,
            "404": error("no such user in this tenant", "user_not_found"),
        },
    },
    ("/v1/users/{user_id}", "delete"): {
        "summary": "Remove a user: their tokens are refused from now on (401 `unknown_user`)",
        "parameters": [_USER_ID],
        "responses": {
            "204": {"description": "removed"},
            "403": _FORBIDDEN,
            "404": error("no such user in this tenant", "user_not_found"),
        },
    },
    ("/v1/whoami", "get"): {
        "summary": "Who the credential is: tenant, subject, role, scopes and the permissions they give",
        "responses": {"200": json_response(WhoAmI, "the principal")},
    },
}
