"""Signed webhooks through the whole stack: the three formats, valid / forged / stale."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
import pytest

from soulbox.triggers.signatures import sign_hmac
from tests.triggers.helpers import finished

SECRET = "webhook-secret-0123456789"


def mac(payload: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signed(scheme: str, body: bytes, *, at: int, secret: str = SECRET) -> dict[str, str]:
    if scheme == "hmac":
        return {"X-Soulbox-Timestamp": str(at), "X-Soulbox-Signature": sign_hmac(secret, body, at)}
    if scheme == "github":
        return {"X-Hub-Signature-256": "sha256=" + mac(body, secret)}
    return {"Stripe-Signature": f"t={at},v1={mac(f'{at}.'.encode() + body, secret)}"}


async def make_hook(api: httpx.AsyncClient, trigger_id: str, scheme: str, **extra: object) -> None:
    webhook = {"scheme": scheme, "secret": SECRET, "tolerance_s": 60, **extra}
    r = await api.post(
        "/v1/triggers", json={"id": trigger_id, "function": "echo", "kind": "webhook", "webhook": webhook}
    )
    assert r.status_code == 201, r.text
    assert r.json()["url"] == f"/v1/hooks/default/{trigger_id}"


@pytest.mark.parametrize("scheme", ["hmac", "github", "stripe"])
async def test_valid_signature_invokes_async(api: httpx.AsyncClient, scheme: str) -> None:
    await make_hook(api, f"hook-{scheme}", scheme)
    body = b'{"event":"push","n":1}'
    r = await api.post(
        f"/v1/hooks/default/hook-{scheme}", content=body, headers=signed(scheme, body, at=int(time.time()))
    )
    assert r.status_code == 202, r.text
    record = await finished(api, r.json()["id"])
    assert record["status"] == "completed" and record["stdout"]["data"] == body.decode()


@pytest.mark.parametrize("scheme", ["hmac", "github", "stripe"])
async def test_wrong_signature_is_401(api: httpx.AsyncClient, scheme: str) -> None:
    await make_hook(api, f"forged-{scheme}", scheme)
    body = b'{"event":"push"}'
    forged = signed(scheme, body, at=int(time.time()), secret="not-the-secret-at-all")
    r = await api.post(f"/v1/hooks/default/forged-{scheme}", content=body, headers=forged)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "signature_invalid"
    tampered = signed(scheme, body, at=int(time.time()))
    r = await api.post(f"/v1/hooks/default/forged-{scheme}", content=body + b" ", headers=tampered)
    assert r.status_code == 401 and r.json()["error"]["code"] == "signature_invalid"
    r = await api.post(f"/v1/hooks/default/forged-{scheme}", content=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "signature_missing"


@pytest.mark.parametrize("scheme", ["hmac", "stripe"])  # GitHub signs no timestamp
async def test_stale_signature_is_401(api: httpx.AsyncClient, scheme: str) -> None:
    await make_hook(api, f"stale-{scheme}", scheme)
    body = b"{}"
    r = await api.post(
        f"/v1/hooks/default/stale-{scheme}", content=body, headers=signed(scheme, body, at=int(time.time()) - 120)
    )
    assert r.status_code == 401
    assert r.json()["error"] == {"code": "signature_stale", "message": "the signature timestamp is more than 60s away"}


async def test_sync_webhook_answers_with_output(api: httpx.AsyncClient) -> None:
    await make_hook(api, "hook-sync", "github", sync=True)
    body = b"ping"
    r = await api.post("/v1/hooks/default/hook-sync", content=body, headers=signed("github", body, at=0))
    assert r.status_code == 200 and r.content == b"ping" and r.headers["x-invocation-id"]


async def test_trigger_crud_and_generated_secret(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/triggers", json={"id": "gen", "function": "echo", "kind": "webhook", "webhook": {"scheme": "github"}}
    )
    assert r.status_code == 201
    secret = r.json()["webhook"]["secret"]
    assert len(secret) >= 32
    again = await api.post("/v1/triggers", json={"id": "gen", "function": "echo", "kind": "webhook", "webhook": {}})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    shown = (await api.get("/v1/triggers/gen")).json()
    assert "secret" not in shown["webhook"] and shown["kind"] == "webhook"
    assert "gen" in [t["id"] for t in (await api.get("/v1/triggers")).json()["triggers"]]
    body = b"x"
    ok = await api.post("/v1/hooks/default/gen", content=body, headers=signed("github", body, at=0, secret=secret))
    assert ok.status_code == 202

    bad = await api.post("/v1/triggers", json={"id": "bad", "function": "echo", "kind": "cron", "webhook": {}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    missing = await api.post(
        "/v1/triggers", json={"id": "nofn", "function": "nope", "kind": "nats", "nats": {"subject": "a.b"}}
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "function_not_found"
    reserved = await api.post(
        "/v1/triggers", json={"id": "res", "function": "echo", "kind": "nats", "nats": {"subject": "sb.invocations.x"}}
    )
    assert reserved.status_code == 400

    assert (await api.delete("/v1/triggers/gen")).status_code == 204
    assert (await api.get("/v1/triggers/gen")).json()["error"]["code"] == "trigger_not_found"
    gone = await api.post("/v1/hooks/default/gen", content=body, headers=signed("github", body, at=0, secret=secret))
    assert gone.status_code == 404
