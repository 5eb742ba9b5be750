"""``soulbox tenants`` and ``soulbox keys``: tenants and API keys through the gateway's HTTP API.

The commands call the running gateway (``--url``, default the configured
``gateway.host``/``port``) with a key (``--key``, default the first of
``gateway.api_keys``: the platform operator's). ``--tenant`` makes the
operator act for another tenant. A new key is printed once, like the API
shows it once; it is stored only as a digest.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer

from soulbox.core.settings import Settings

tenants_app = typer.Typer(help="Tenants (platform operator).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of a tenant.", no_args_is_help=True)

Url = Annotated[str | None, typer.Option("--url", help="the gateway (default: http://<gateway.host>:<gateway.port>)")]
Key = Annotated[str | None, typer.Option("--key", help="the API key to call with (default: the first operator key)")]
Tenant = Annotated[str | None, typer.Option("--tenant", help="act for this tenant (platform operator only)")]


def _call(method: str, path: str, url: str | None, key: str | None, tenant: str | None, **kwargs: Any) -> Any:
    settings = Settings()
    base = url or f"http://{settings.gateway.host}:{settings.gateway.port}"
    if key is None and settings.gateway.api_keys:
        key = settings.gateway.api_keys[0].get_secret_value()
    headers = {"X-API-KEY": key} if key else {}
    if tenant:
        headers["X-Soulbox-Tenant"] = tenant
    try:
        response = httpx.request(method, base + path, headers=headers, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the gateway at {base}: {exc}", err=True)
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            typer.echo(f"{response.status_code} {error['code']}: {error['message']}", err=True)
        except (ValueError, KeyError, TypeError):
            typer.echo(f"{response.status_code}: {response.text[:500]}", err=True)
        raise typer.Exit(1)
    return response.json() if response.content else None


def _print(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@tenants_app.command("create")
def create_tenant(
    name: Annotated[str, typer.Argument(help="the tenant's name: [a-z0-9][a-z0-9_-]*")],
    display_name: Annotated[str, typer.Option(help="a human name")] = "",
    url: Url = None,
    key: Key = None,
) -> None:
    """Create a tenant; prints it with its owner key (shown this once)."""
    _print(_call("POST", "/v1/tenants", url, key, None, json={"name": name, "display_name": display_name}))


@tenants_app.command("list")
def list_tenants(url: Url = None, key: Key = None) -> None:
    """Every tenant."""
    _print(_call("GET", "/v1/tenants", url, key, None)["tenants"])


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="what the key is for")] = "",
    role: Annotated[str | None, typer.Option(help="owner, admin, developer or viewer (default: yours)")] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="narrow to this permission (repeatable)")] = None,
    expires_in: Annotated[int | None, typer.Option(help="seconds until it expires (default: never)")] = None,
    url: Url = None,
    key: Key = None,
    tenant: Tenant = None,
) -> None:
    """Create an API key; prints it with the key itself (shown this once)."""
    body: dict[str, Any] = {"name": name, "scopes": scope or []}
    if role:
        body["role"] = role
    if expires_in is not None:
        body["expires_in_s"] = expires_in
    _print(_call("POST", "/v1/api-keys", url, key, tenant, json=body))


@keys_app.command("list")
def list_keys(url: Url = None, key: Key = None, tenant: Tenant = None) -> None:
    """The tenant's keys (never their secrets)."""
    _print(_call("GET", "/v1/api-keys", url, key, tenant)["api_keys"])


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="the key's id (the part after sb_)")],
    url: Url = None,
    key: Key = None,
    tenant: Tenant = None,
) -> None:
    """Revoke a key: it is refused from now on."""
    _call("DELETE", f"/v1/api-keys/{key_id}", url, key, tenant)
    typer.echo(f"revoked {key_id}")
