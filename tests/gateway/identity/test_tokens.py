"""JWTs: SoulBox's own through the client-credentials grant, and an external OIDC issuer's through its JWKS."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from nats.aio.client import Client as NATS

from soulbox.core.bus import Buckets
from soulbox.core.identity import SigningKeyRecord
from soulbox.core.settings import Settings
from soulbox.core.store import scan
from soulbox.gateway.identity.tokens import _load_pem

from .conftest import Gateway, operator_settings

ISSUER = "https://idp.example.test/"
AUDIENCE = "soulbox-api"


async def _token(gw: Gateway, client_id: str, secret: str, **form: str) -> httpx.Response:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return await gw.client.post(
        "/oauth/token", data={"grant_type": "client_credentials", **form}, headers={"Authorization": f"Basic {basic}"}
    )


async def test_client_credentials_give_a_short_lived_jwt(gw: Gateway, buckets: Buckets) -> None:
    owner = await gw.tenant("acme")
    made = await gw.call("POST", "/v1/oauth-clients", owner, json={"name": "ci", "role": "developer"})
    assert made.status_code == 201
    client_id, secret = made.json()["client_id"], made.json()["client_secret"]
    listed = (await gw.call("GET", "/v1/oauth-clients", owner)).json()["oauth_clients"]
    assert [c["client_id"] for c in listed] == [client_id] and "client_secret" not in listed[0]

    r = await _token(gw, client_id, secret)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    issued = r.json()
    assert issued["token_type"] == "Bearer" and issued["expires_in"] == 900
    token = issued["access_token"]
    me = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert (me.json()["tenant"], me.json()["role"], me.json()["subject"]) == (
        "acme",
        "developer",
        f"client:{client_id}",
    )

    # The JWKS verifies it: what an outside service would do.
    jwks = (await gw.client.get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    public = jwt.PyJWK({k: v for k, v in next(k for k in jwks["keys"] if k["kid"] == kid).items()})
    claims = jwt.decode(token, public.key, algorithms=["ES256"], audience="soulbox")
    assert claims["tenant"] == "acme" and claims["exp"] - claims["iat"] == 900

    # A narrower scope can be asked for; a wider one cannot.
    narrow = (await _token(gw, client_id, secret, scope="functions:read")).json()["access_token"]
    scoped = await gw.client.get("/v1/triggers", headers={"Authorization": f"Bearer {narrow}"})
    assert scoped.status_code == 403
    assert (await _token(gw, client_id, secret, scope="keys:write")).json()["error"] == "invalid_scope"

    # Tampered: another payload under the same signature.
    head, body, signature = token.split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_claims["role"] = "owner"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).decode().rstrip("=")
    for bad in (f"{head}.{forged_body}.{signature}", f"{head}.{body}.{signature[:-4]}AAAA"):
        refused = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {bad}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"

    # Expired: signed with SoulBox's own key, but an hour old.
    (record,) = [r async for _, r in scan(buckets.jwt_keys, ">", SigningKeyRecord)]
    now = int(time.time())
    old = {**claims, "iat": now - 3600, "nbf": now - 3600, "exp": now - 1800}
    stale = jwt.encode(old, _load_pem(record.private_pem.encode()), algorithm="ES256", headers={"kid": record.kid})
    expired = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {stale}"})
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "token_expired"

    # Wrong secret, unknown client, then a revoked client: its live token stops working at once.
    assert (await _token(gw, client_id, "nope")).json()["error"] == "invalid_client"
    assert (await _token(gw, "sbc_0000000000000000", secret)).status_code == 401
    assert (await gw.call("DELETE", f"/v1/oauth-clients/{client_id}", owner)).status_code == 204
    gone = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "client_revoked"
    assert (await _token(gw, client_id, secret)).status_code == 401

    # Wait for the last refusal's own record: /oauth/token has been refused (and audited) before it.
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        refusals = {r.detail.get("auth_failure") for r in gw.audit if r.resource == "/v1/whoami" and r.result == "401"}
        if refusals >= {"invalid_token", "token_expired", "client_revoked"}:
            break
        assert asyncio.get_running_loop().time() < deadline, refusals
        await asyncio.sleep(0.02)
    assert {r.detail.get("auth_failure") for r in gw.audit if r.resource == "/oauth/token"} >= {"invalid_client"}


class _Jwks:
    """A stand-in for an outside OIDC issuer: serves a JWKS on a local port (our test fixture)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "idp-key-1"
        self.fetches = 0
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def token(self, subject: str, *, tenant: str = "acme", key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 300,
            "soulbox_tenant": tenant,
        }
        return jwt.encode({**payload, **claims}, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def idp() -> Iterator[_Jwks]:
    issuer = _Jwks()
    thread = threading.Thread(target=issuer.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        issuer.server.shutdown()
        issuer.server.server_close()
        thread.join()


@pytest_asyncio.fixture
async def gateway_settings(settings: Settings, idp: _Jwks) -> AsyncIterator[Settings]:
    yield operator_settings(settings, oidc_issuers=[{"issuer": ISSUER, "jwks_url": idp.url, "audience": AUDIENCE}])


async def test_an_external_issuers_users_are_accepted(gw: Gateway, idp: _Jwks, nc: NATS) -> None:
    owner = await gw.tenant("acme")
    alice = idp.token("alice")

    unknown = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {alice}"})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "unknown_user"

    user = {"issuer": ISSUER, "subject": "alice", "email": "alice@example.test", "role": "developer"}
    made = await gw.call("POST", "/v1/users", owner, json=user)
    assert made.status_code == 201, made.text
    assert (await gw.call("POST", "/v1/users", owner, json=user)).status_code == 409
    assert (await gw.call("POST", "/v1/users", owner, json={**user, "issuer": "https://other/"})).status_code == 400
    me = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {alice}"})
    assert me.status_code == 200, me.text
    assert (me.json()["tenant"], me.json()["role"], me.json()["subject"]) == (
        "acme",
        "developer",
        f"user:{made.json()['id']}",
    )
    assert idp.fetches == 1  # cached

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad, code in [
        (idp.token("alice", key=stranger), "invalid_token"),  # right kid, wrong key
        (idp.token("alice", aud="someone-else"), "invalid_token"),
        (idp.token("alice", exp=int(time.time()) - 60), "token_expired"),
        (idp.token("alice", tenant="globex"), "unknown_user"),  # registered in acme only
        (idp.token("mallory"), "unknown_user"),
    ]:
        r = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == code, code
    hs = jwt.encode({"iss": ISSUER, "sub": "alice"}, "s" * 40, algorithm="HS256", headers={"kid": idp.kid})
    r = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {hs}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"

    uid = made.json()["id"]
    assert (await gw.call("DELETE", f"/v1/users/{uid}", owner)).status_code == 204
    r = await gw.client.get("/v1/whoami", headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unknown_user"
