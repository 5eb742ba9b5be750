"""API keys: shown once, stored hashed, refused once expired or revoked; roles and scopes; refusals audited."""

from __future__ import annotations

import asyncio
import hashlib

from soulbox.core.bus import Buckets
from soulbox.core.codec import decode
from soulbox.core.identity import ApiKeyRecord
from tests.guests import wasm

from .conftest import OPERATOR_KEY, Gateway


async def _deploy(gw: Gateway, key: str, name: str = "echo") -> int:
    r = await gw.call(
        "POST",
        "/v1/functions",
        key,
        data={"name": name},
        files={"module": (f"{name}.wasm", wasm("echo"), "application/wasm")},
    )
    return r.status_code


async def test_a_key_is_shown_once_and_stored_as_a_digest(gw: Gateway, buckets: Buckets) -> None:
    owner = await gw.tenant("acme")
    created = await gw.call("POST", "/v1/api-keys", owner, json={"name": "ci", "role": "developer"})
    assert created.status_code == 201
    body = created.json()
    key, key_id = body["key"], body["id"]
    assert key.startswith(f"sb_{key_id}_") and body["role"] == "developer" and body["tenant"] == "acme"
    secret = key.removeprefix(f"sb_{key_id}_")

    listed = (await gw.call("GET", "/v1/api-keys", owner)).json()["api_keys"]
    assert {k["id"] for k in listed} >= {key_id} and all("key" not in k and "secret_sha256" not in k for k in listed)
    one = (await gw.call("GET", f"/v1/api-keys/{key_id}", owner)).json()
    assert "key" not in one and one["state"] == "active"

    raw = (await buckets.api_keys.get(key_id)).value
    assert raw is not None and secret.encode() not in raw and key.encode() not in raw
    assert decode(ApiKeyRecord, raw).secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()

    me = (await gw.call("GET", "/v1/whoami", key)).json()
    assert (me["tenant"], me["role"], me["key_id"], me["subject"]) == ("acme", "developer", key_id, f"key:{key_id}")
    bearer = await gw.call("GET", "/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    assert bearer.json()["key_id"] == key_id


async def test_expired_and_revoked_keys_are_refused_and_audited(gw: Gateway) -> None:
    owner = await gw.tenant("acme")
    brief = await gw.key(owner, name="brief", expires_in_s=1)
    revoked = await gw.key(owner, name="revoked")
    assert (await gw.call("GET", "/v1/functions", brief)).status_code == 200
    assert (await gw.call("GET", "/v1/functions", revoked)).status_code == 200

    revoked_id = revoked.split("_")[1]
    assert (await gw.call("DELETE", f"/v1/api-keys/{revoked_id}", owner)).status_code == 204
    r = await gw.call("GET", "/v1/functions", revoked)
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"
    assert (await gw.call("GET", f"/v1/api-keys/{revoked_id}", owner)).json()["state"] == "key_revoked"

    await asyncio.sleep(1.2)
    r = await gw.call("GET", "/v1/usage", brief)
    assert r.status_code == 401 and r.json()["error"] == {
        "code": "key_expired",
        "message": r.json()["error"]["message"],
    }

    wrong_secret = f"sb_{revoked_id}_{'x' * 43}"
    for path, key, code in [
        ("/v1/triggers", wrong_secret, "invalid_credentials"),
        ("/v1/audit", "not-a-key", "invalid_credentials"),
        ("/v1/dead-letters", None, "unauthenticated"),
    ]:
        r = await gw.call("GET", path, key)
        assert r.status_code == 401 and r.json()["error"]["code"] == code, path
        assert r.headers["www-authenticate"].startswith("Bearer")

    # Every refusal is in the audit log with why, and the tenant of a known key sees attempts with it.
    expired = await gw.audited("/v1/usage", "401")
    assert expired.tenant == "acme" and expired.detail == {"auth_failure": "key_expired", "key_id": brief.split("_")[1]}
    rev = await gw.audited("/v1/functions", "401")
    assert rev.tenant == "acme" and rev.detail["auth_failure"] == "key_revoked" and rev.source == "203.0.113.7"
    assert (await gw.audited("/v1/triggers", "401")).detail["auth_failure"] == "invalid_credentials"
    assert (await gw.audited("/v1/dead-letters", "401")).tenant == "default"  # nobody to attribute it to


async def test_roles_and_scopes_decide_and_refusals_are_403_and_audited(gw: Gateway) -> None:
    owner = await gw.tenant("acme")
    viewer = await gw.key(owner, role="viewer")
    developer = await gw.key(owner, role="developer")
    admin = await gw.key(owner, role="admin")
    reader = await gw.key(owner, role="developer", scopes=["functions:read"])

    assert await _deploy(gw, viewer) == 403
    assert await _deploy(gw, developer) == 201
    assert (await gw.call("GET", "/v1/functions", viewer)).status_code == 200
    assert (await gw.call("GET", "/v1/functions", reader)).status_code == 200
    r = await gw.call("POST", "/v1/functions/echo/invoke?async=true", reader)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await gw.call("GET", "/v1/triggers", reader)).status_code == 403
    assert (await gw.call("POST", "/v1/functions/echo/invoke?async=true", developer)).status_code == 202

    # Keys and users: admins manage them, developers do not; nobody grants more than they have.
    assert (await gw.call("POST", "/v1/api-keys", developer, json={"role": "viewer"})).status_code == 403
    assert (await gw.call("GET", "/v1/api-keys", viewer)).status_code == 403
    assert (await gw.call("POST", "/v1/api-keys", admin, json={"role": "owner"})).status_code == 403
    assert (await gw.call("POST", "/v1/api-keys", admin, json={"role": "developer"})).status_code == 201
    narrow = await gw.call("POST", "/v1/api-keys", reader, json={"scopes": ["functions:*"]})
    assert narrow.status_code == 403  # a developer narrowed to functions:read has no keys:write anyway
    bad = await gw.call("POST", "/v1/api-keys", admin, json={"scopes": ["everything"]})
    assert bad.status_code == 400
    # Tenant data: only the owner deletes it; only the operator manages tenants.
    assert (await gw.call("DELETE", "/v1/tenants/acme/data", admin)).status_code == 403
    assert (await gw.call("GET", "/v1/tenants/acme/export", admin)).status_code == 200
    assert (await gw.call("GET", "/v1/tenants", owner)).status_code == 403
    assert (await gw.call("POST", "/v1/tenants", owner, json={"name": "mine"})).status_code == 403

    refused = await gw.audited("/v1/triggers", "403")
    assert refused.tenant == "acme" and refused.actor == f"key:{reader.split('_')[1]}"
    assert refused.detail["auth_failure"] == "forbidden"


async def test_the_operator_acts_for_any_tenant_and_nobody_else_does(gw: Gateway) -> None:
    acme = await gw.tenant("acme")
    await gw.tenant("globex")
    assert await _deploy(gw, acme) == 201
    mine = await gw.call("GET", "/v1/functions", OPERATOR_KEY, headers={"X-Soulbox-Tenant": "acme"})
    assert [f["name"] for f in mine.json()["functions"]] == ["echo"]
    assert (await gw.call("GET", "/v1/functions", OPERATOR_KEY)).json()["functions"] == []  # the default tenant
    assert (await gw.call("GET", "/v1/usage?tenant=acme", OPERATOR_KEY)).status_code == 200
    assert (await gw.call("GET", "/v1/tenants/acme/export", OPERATOR_KEY)).json()["tenant"] == "acme"
    for path, headers in [
        ("/v1/usage?tenant=globex", {}),
        ("/v1/functions", {"X-Soulbox-Tenant": "globex"}),
        ("/v1/tenants/globex/export", {}),
    ]:
        r = await gw.call("GET", path, acme, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "tenant_not_found", path
    listed = (await gw.call("GET", "/v1/tenants", OPERATOR_KEY)).json()["tenants"]
    assert [t["name"] for t in listed] == ["acme", "globex"]
    assert (await gw.call("POST", "/v1/tenants", OPERATOR_KEY, json={"name": "acme"})).status_code == 409
