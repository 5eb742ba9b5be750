"""Tenant API keys on the whole stack: the official E2B SDK with a SoulBox key, and tenants kept apart."""

from __future__ import annotations

import httpx
import pytest
from e2b import NotFoundException, Sandbox
from e2b.exceptions import AuthenticationException, SandboxException

from tests.stack import Stack

from .conftest import API_KEY

pytestmark = pytest.mark.slow


def _tenant(stack: Stack, name: str) -> str:
    r = httpx.post(f"{stack.url}/v1/tenants", json={"name": name}, headers={"X-API-KEY": API_KEY}, timeout=30)
    assert r.status_code in (201, 409), r.text
    if r.status_code == 409:  # made by an earlier test of this session: a fresh owner key for it
        r = httpx.post(
            f"{stack.url}/v1/api-keys",
            json={"name": "again"},
            headers={"X-API-KEY": API_KEY, "X-Soulbox-Tenant": name},
            timeout=30,
        )
        key: str = r.json()["key"]
        return key
    owner: str = r.json()["owner_key"]["key"]
    return owner


def test_the_e2b_sdk_works_with_a_tenant_key_and_tenants_stay_apart(e2b_env: Stack) -> None:
    acme, globex = _tenant(e2b_env, "e2b-acme"), _tenant(e2b_env, "e2b-globex")
    sbx = Sandbox.create(api_key=acme, timeout=120, metadata={"suite": "identity"})
    try:
        assert sbx.commands.run("echo tenant-box").stdout == "tenant-box\n"
        assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list(api_key=acme).next_items()]
        # Another tenant neither lists, nor reaches, nor kills it: to it the sandbox does not exist.
        assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=globex).next_items()]
        assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=API_KEY).next_items()]
        with pytest.raises(NotFoundException):
            Sandbox.connect(sbx.sandbox_id, api_key=globex)
        assert Sandbox.kill(sbx.sandbox_id, api_key=globex) is False
        other = httpx.get(f"{e2b_env.url}/v1/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": globex}, timeout=30)
        assert other.status_code == 404
        # A viewer of acme sees it but may not create one.
        viewer = httpx.post(
            f"{e2b_env.url}/v1/api-keys", json={"role": "viewer"}, headers={"X-API-KEY": acme}, timeout=30
        ).json()["key"]
        assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list(api_key=viewer).next_items()]
        refused = httpx.post(
            f"{e2b_env.url}/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": viewer}, timeout=30
        )
        assert refused.status_code == 403 and refused.json()["error_code"] == "forbidden"
        # A revoked key is refused by the SDK like a wrong one.
        key_id = viewer.split("_")[1]
        assert httpx.delete(f"{e2b_env.url}/v1/api-keys/{key_id}", headers={"X-API-KEY": acme}).status_code == 204
        with pytest.raises((AuthenticationException, SandboxException)):
            Sandbox.list(api_key=viewer).next_items()
    finally:
        assert Sandbox.kill(sbx.sandbox_id, api_key=acme) is True
