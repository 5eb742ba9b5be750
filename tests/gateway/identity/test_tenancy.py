"""Every resource belongs to a tenant and is invisible to the others: 404, never 403 and never the data."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.sandboxes import SandboxRecord, SandboxState
from soulbox.core.schemas import (
    DeadLetter,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    Status,
    Tier,
    WorkerHeartbeat,
    utcnow,
)
from soulbox.core.store import get_model
from soulbox.gateway.app import routes
from soulbox.gateway.auth import unlisted_routes
from tests.guests import wasm

from .conftest import Gateway

SANDBOX = "boxone0001"


async def _acme_resources(gw: Gateway, buckets: Buckets, js: JetStreamContext, owner: str) -> dict[str, Any]:
    """One of each resource type in tenant acme."""
    files = {"module": ("echo.wasm", wasm("echo"), "application/wasm")}
    deployed = await gw.call("POST", "/v1/functions", owner, data={"name": "echo"}, files=files)
    assert deployed.status_code == 201, deployed.text
    version = deployed.json()["version"]
    alias = await gw.call("PUT", "/v1/functions/echo/aliases/live", owner, json={"targets": [{"version": version}]})
    assert alias.status_code == 201, alias.text
    trigger = {"id": "on-push", "function": "echo", "kind": "webhook", "webhook": {"scheme": "hmac"}}
    assert (await gw.call("POST", "/v1/triggers", owner, json=trigger)).status_code == 201
    route = {"id": "orders", "function": "echo", "kind": "http", "http": {"method": "POST", "path": "/orders"}}
    created = await gw.call("POST", "/v1/triggers", owner, json=route)
    assert created.json()["url"] == "/run/acme/orders"
    invoked = await gw.call(
        "POST", "/v1/functions/echo/invoke?async=true", owner, headers={"X-Invocation-Id": "firstcall-0001"}
    )
    assert invoked.status_code == 202, invoked.text
    spec = await get_model(buckets.functions, names.function_key("acme", "echo"), FunctionSpec)
    assert spec is not None
    letter = DeadLetter(
        request=InvocationRequest(id="deadcall-0001", tenant="acme", function=spec, input=b"x"),
        attempts=1,
        status=Status.FAILED,
        error=InvocationError(kind="exit", message="1"),
    )
    await js.publish(names.dead_letter_subject("acme", "deadcall-0001"), encode(letter))
    now = utcnow()
    beat = WorkerHeartbeat(
        worker_id="w-acme",
        tiers=[Tier.LINUX],
        capacity=1,
        in_flight=0,
        pid=os.getpid(),
        host=socket.gethostname(),
        started_at=now,
    )
    await buckets.workers.put("w-acme", encode(beat))
    record = SandboxRecord(
        sandbox_id=SANDBOX,
        tenant="acme",
        template="base",
        worker_id="w-acme",
        state=SandboxState.RUNNING,
        started_at=now,
        end_at=now + timedelta(hours=1),
        cpu_count=1,
        memory_mb=512,
        disk_mb=1024,
        envd_version="0.1.0",
        access_token="t",
    )
    await buckets.sandboxes.put(SANDBOX, encode(record))
    key_id = (await gw.call("POST", "/v1/api-keys", owner, json={"name": "other"})).json()["id"]
    client_id = (await gw.call("POST", "/v1/oauth-clients", owner, json={"name": "ci"})).json()["client_id"]
    return {"key_id": key_id, "client_id": client_id, "version": version}


# (method, path, body) of every resource type; {key_id} and {version} are filled in.
READS = [
    ("GET", "/v1/functions/echo", None),
    ("GET", "/v1/functions/echo/versions", None),
    ("GET", "/v1/invocations/firstcall-0001", None),
    ("GET", "/v1/triggers/on-push", None),
    ("GET", f"/v1/sandboxes/{SANDBOX}", None),
    ("GET", f"/sandboxes/{SANDBOX}", None),
    ("GET", "/v1/api-keys/{key_id}", None),
]
WRITES = [
    ("POST", "/v1/functions/echo/invoke?async=true", None),
    ("PUT", "/v1/functions/echo/aliases/live", {"targets": [{"version": "{version}"}]}),
    ("POST", "/v1/functions/echo/aliases/live/rollback", None),
    ("PUT", "/v1/triggers/on-push", {"id": "on-push", "function": "echo", "kind": "webhook", "webhook": {}}),
    ("DELETE", "/v1/triggers/on-push", None),
    ("POST", "/v1/dead-letters/deadcall-0001/replay", None),
    ("POST", f"/v1/sandboxes/{SANDBOX}/timeout", {"timeout_s": 60}),
    ("DELETE", f"/v1/sandboxes/{SANDBOX}", None),
    ("POST", f"/sandboxes/{SANDBOX}/pause", None),
    ("DELETE", f"/sandboxes/{SANDBOX}", None),
    ("DELETE", "/v1/api-keys/{key_id}", None),
    ("DELETE", "/v1/oauth-clients/{client_id}", None),
    ("DELETE", "/v1/functions/echo/aliases/live", None),
    ("DELETE", "/v1/functions/echo", None),
]


def _fill(value: Any, found: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**found)
    if isinstance(value, dict):
        return {k: _fill(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, found) for v in value]
    return value


async def test_another_tenants_resources_are_404(gw: Gateway, buckets: Buckets, js: JetStreamContext) -> None:
    acme = await gw.tenant("acme")
    globex = await gw.tenant("globex")
    found = await _acme_resources(gw, buckets, js, acme)

    for method, path, _ in READS:  # they exist: acme sees them
        r = await gw.call(method, _fill(path, found), acme)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"

    for method, path, body in READS + WRITES:
        r = await gw.call(method, _fill(path, found), globex, json=_fill(body, found))
        assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
        error = r.json() if path.startswith("/sandboxes") else r.json()["error"]
        if path.startswith("/sandboxes"):  # E2B's shape
            assert error["code"] == 404 and error["error_code"] == "sandbox_not_found"
        assert "acme" not in r.text

    # Lists and reports show globex only its own (nothing), whatever it asks for.
    for path, field in [
        ("/v1/functions", "functions"),
        ("/v1/triggers", "triggers"),
        ("/v1/dead-letters", "dead_letters"),
        ("/v1/sandboxes", "sandboxes"),
        ("/v1/api-keys", "api_keys"),
        ("/v1/oauth-clients", "oauth_clients"),
    ]:
        listed = (await gw.call("GET", path, globex)).json()[field]
        assert all(item.get("tenant", "globex") == "globex" for item in listed), path
        assert not [i for i in listed if i.get("name") == "echo" or i.get("id") in ("on-push", "deadcall-0001")]
    assert (await gw.call("GET", "/sandboxes", globex)).json() == []
    assert (await gw.call("GET", "/v1/functions/echo/aliases", globex)).json() == {"aliases": []}
    assert [a["name"] for a in (await gw.call("GET", "/v1/functions/echo/aliases", acme)).json()["aliases"]] == ["live"]
    usage = (await gw.call("GET", "/v1/usage", globex)).json()
    assert usage["tenant"] == "globex"
    audit = (await gw.call("GET", "/v1/audit", globex)).json()
    assert all("acme" not in str(record) for record in audit["records"])
    for path in ("/v1/usage?tenant=acme", "/v1/audit?tenant=acme", "/v1/tenants/acme/export"):
        r = await gw.call("GET", path, globex)
        assert r.status_code == 404 and r.json()["error"]["code"] == "tenant_not_found", path
    assert (await gw.call("DELETE", "/v1/tenants/acme/data", globex)).status_code == 404

    # A caller-chosen invocation id of another tenant is not a way to its result.
    files = {"module": ("echo.wasm", wasm("echo"), "application/wasm")}
    assert (await gw.call("POST", "/v1/functions", globex, data={"name": "echo"}, files=files)).status_code == 201
    stolen = await gw.call("POST", "/v1/functions/echo/invoke", globex, headers={"X-Invocation-Id": "firstcall-0001"})
    assert stolen.status_code == 409 and "acme" not in stolen.text

    # After all that, acme's resources are untouched.
    for method, path, _ in READS:
        assert (await gw.call(method, _fill(path, found), acme)).status_code == 200, path


async def test_webhooks_and_routes_are_addressed_within_their_tenant(gw: Gateway) -> None:
    acme = await gw.tenant("acme")
    await gw.tenant("globex")
    files = {"module": ("echo.wasm", wasm("echo"), "application/wasm")}
    assert (await gw.call("POST", "/v1/functions", acme, data={"name": "echo"}, files=files)).status_code == 201
    hook = {"id": "on-push", "function": "echo", "kind": "webhook", "webhook": {"scheme": "hmac"}}
    assert (await gw.call("POST", "/v1/triggers", acme, json=hook)).json()["url"] == "/v1/hooks/acme/on-push"
    route = {"id": "orders", "function": "echo", "kind": "http", "http": {"method": "POST", "path": "/orders"}}
    assert (await gw.call("POST", "/v1/triggers", acme, json=route)).status_code == 201

    # No credentials needed (signature / public), and the tenant in the URL decides.
    unsigned = await gw.call("POST", "/v1/hooks/acme/on-push", content=b"{}")
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "signature_missing"
    refused = await gw.audited("/v1/hooks/acme/on-push", "401")
    assert refused.tenant == "acme" and refused.detail["auth_failure"] == "signature_missing"
    other = await gw.call("POST", "/v1/hooks/globex/on-push", content=b"{}")
    assert other.status_code == 404 and other.json()["error"]["code"] == "trigger_not_found"
    assert (await gw.call("POST", "/v1/hooks/No!/on-push", content=b"{}")).status_code == 404
    missing = await gw.call("POST", "/run/globex/orders", content=b"{}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "route_not_found"
    no_tenant = await gw.call("POST", "/run/orders/", content=b"{}")  # "orders" is a tenant here
    assert no_tenant.status_code == 404 and no_tenant.json()["error"]["code"] == "route_not_found"


def test_every_route_has_a_permission() -> None:
    # A route missing from the table is operator-only: add it to gateway/identity/rbac.py ROUTES.
    assert unlisted_routes(routes()) == []
