"""Secrets and signed URLs through a whole stack: real NATS, gateways, scheduler, worker, audit consumer.

The secret's value must reach the function's (and the sandbox's) environment
and nothing else: not the NATS traffic (every message seen on ``>``, every
message left in a stream), not the process logs, not the invocation record,
not any API answer. The stack's master key is rotated last.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import nats
import pytest

from soulbox.core.natsserver import free_port
from soulbox.core.secrets import key_id
from tests.stack import Stack

pytestmark = pytest.mark.slow

API_KEY = "sb_secrets_test_key_0123"
OTHER_KEY = "sb_other_tenant_key_0123"
GRACE_S = 3.0
KEY_A, KEY_B = os.urandom(32), os.urandom(32)
VALUE = f"sv-{uuid.uuid4().hex}"

PYTHON_FN = b'import hashlib, os\nprint(hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest())\n'
QUICKJS_FN = (
    b'const v = std.getenv("API_TOKEN"); let h = 0;'
    b" for (let i = 0; i < v.length; i++) h = (h * 31 + v.charCodeAt(i)) % 1000000007;"
    b' console.log(v.length + ":" + h);'
)

DENO_FN = (
    b'const v = Deno.env.get("API_TOKEN") ?? "";\n'
    b'const d = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(v)));\n'
    b'console.log(Array.from(d, (b) => b.toString(16).padStart(2, "0")).join(""));\n'
)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def checksum(value: str) -> str:
    h = 0
    for c in value:
        h = (h * 31 + ord(c)) % 1000000007
    return f"{len(value)}:{h}"


def leaks(blob: bytes) -> bool:
    """Whether ``blob`` holds the value, plainly or base64-encoded (as JSON answers carry bytes)."""
    raw = VALUE.encode()
    return raw in blob or base64.b64encode(raw)[:-4] in blob


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "SOULBOX_GATEWAY__API_KEYS": json.dumps([API_KEY]),
        "SOULBOX_SECRETS__MASTER_KEY": b64(KEY_A),
        "SOULBOX_SIGNED_URLS__ROTATION_GRACE_S": str(GRACE_S),
    }
    s = Stack(tmp_path_factory.mktemp("secrets-stack"), workers=1, env=env)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def other(stack: Stack) -> Iterator[httpx.Client]:
    """A second gateway whose callers are tenant ``other``."""
    port = free_port()
    stack.spawn(
        "gateway-other",
        "soulbox.gateway",
        SOULBOX_GATEWAY__PORT=str(port),
        SOULBOX_TENANT="other",
        SOULBOX_GATEWAY__API_KEYS=json.dumps([OTHER_KEY]),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, stack.log("gateway-other")
        time.sleep(0.1)
    with httpx.Client(base_url=url, headers={"X-API-KEY": OTHER_KEY}, timeout=60) as client:
        yield client


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": API_KEY}, timeout=60) as client:
        yield client


class Sniffer:
    """Every NATS message (subject ``>``) while it runs, on its own thread and event loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[tuple[str, bytes]] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),), daemon=True)

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        nc = await nats.connect(self.url)

        async def seen(msg: nats.aio.msg.Msg) -> None:
            headers = json.dumps(msg.headers or {}).encode()
            self.messages.append((msg.subject, msg.subject.encode() + headers + msg.data))

        await nc.subscribe(">", cb=seen)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.flush()
        await nc.close()

    def __enter__(self) -> Sniffer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def stored_messages(url: str) -> list[tuple[str, bytes]]:
    """Every message still held by any stream (KV buckets and object stores included)."""

    async def read() -> list[tuple[str, bytes]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        found: list[tuple[str, bytes]] = []
        try:
            for info in await js.streams_info():
                state = info.state
                for seq in range(max(1, state.first_seq), state.last_seq + 1 if state.messages else 0):
                    try:
                        msg = await js.get_msg(info.config.name or "", seq)
                    except nats.js.errors.NotFoundError:
                        continue  # deleted (acknowledged work-queue message, replaced KV revision)
                    found.append((msg.subject or "", (msg.subject or "").encode() + (msg.data or b"")))
        finally:
            await nc.close()
        return found

    return asyncio.run(read())


def deploy(
    api: httpx.Client, name: str, runtime: str, code: bytes, filename: str, secrets: dict[str, str]
) -> httpx.Response:
    return api.post(
        "/v1/functions",
        data={"name": name, "runtime": runtime, "secrets": json.dumps(secrets)},
        files={"code": (filename, code, "application/octet-stream")},
    )


def wait_for(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def audit_reads(api: httpx.Client) -> list[dict[str, object]]:
    records = api.get("/v1/audit", params={"limit": 1000}).json()["records"]
    return [r for r in records if r["action"] == "secret.read"]


def test_secret_reaches_only_the_function_and_the_sandbox(stack: Stack, api: httpx.Client) -> None:
    answers: list[httpx.Response] = []
    with Sniffer(stack.nats.url) as sniffer:
        put = api.put("/v1/secrets/API_TOKEN", json={"value": VALUE})
        assert put.status_code == 201, put.text
        assert put.json()["name"] == "API_TOKEN" and put.json()["version"] == 1
        assert put.json()["master_key_id"] == key_id(KEY_A)
        listed = api.get("/v1/secrets")
        assert [s["name"] for s in listed.json()["secrets"]] == ["API_TOKEN"]
        answers += [put, listed, api.get("/v1/secrets/API_TOKEN")]

        for name, runtime, code, filename, expected in (
            ("py-secret", "python", PYTHON_FN, "main.py", hashlib.sha256(VALUE.encode()).hexdigest()),
            ("js-secret", "quickjs", QUICKJS_FN, "main.js", checksum(VALUE)),
            ("deno-secret", "deno", DENO_FN, "main.ts", hashlib.sha256(VALUE.encode()).hexdigest()),
        ):
            deployed = deploy(api, name, runtime, code, filename, {"API_TOKEN": "API_TOKEN"})
            assert deployed.status_code == 201, deployed.text
            assert deployed.json()["secrets"] == {"API_TOKEN": "API_TOKEN"}
            invoked = api.post(f"/v1/functions/{name}/invoke")
            assert invoked.status_code == 200, invoked.text
            assert invoked.text.strip() == expected  # the function saw the value
            record = api.get(f"/v1/invocations/{invoked.headers['x-invocation-id']}")
            assert record.json()["status"] == "completed"
            answers += [deployed, invoked, record, api.get(f"/v1/functions/{name}")]

        created = api.post("/v1/sandboxes", json={"secrets": {"API_TOKEN": "API_TOKEN"}, "timeout_s": 120})
        assert created.status_code == 201, created.text
        sandbox = created.json()
        answers += [created, api.get(f"/v1/sandboxes/{sandbox['sandbox_id']}")]
        reads = wait_for(lambda: len(r := audit_reads(api)) >= 4 and r)
        answers.append(api.get("/v1/audit", params={"limit": 1000}))

    # Audited: one read per run, naming the secret and what it was opened for, never the value.
    assert {r["resource"] for r in reads} == {"secrets/API_TOKEN"}
    actors = {r["actor"] for r in reads}
    assert {
        "function:py-secret",
        "function:js-secret",
        "function:deno-secret",
        f"sandbox:{sandbox['sandbox_id']}",
    } <= actors
    assert all(r["detail"].get("invocation_id") or r["detail"].get("sandbox_id") for r in reads)  # type: ignore[union-attr]

    # Nowhere else: answers, NATS traffic, stream contents, process logs.
    assert not [a.request.url for a in answers if leaks(a.content)]
    assert any(s.startswith("$KV.sb_secrets.") for s, _ in sniffer.messages)  # the sniffer sees it all
    assert not [s for s, blob in sniffer.messages if leaks(blob)]
    stored = stored_messages(stack.nats.url)
    assert any(s.startswith("$KV.sb_secrets.") for s, _ in stored)
    assert not [s for s, blob in stored if leaks(blob)]
    assert not [name for name in stack.processes if leaks(stack.log(name).encode())]

    # The sandbox's processes have it (envd's own /envs, on the sandbox's data plane).
    envs = httpx.get(
        f"{stack.url}/envs",
        headers={"E2b-Sandbox-Id": sandbox["sandbox_id"], "X-Access-Token": sandbox["access_token"]},
        timeout=30,
    )
    assert envs.status_code == 200 and envs.json()["API_TOKEN"] == VALUE
    assert api.delete(f"/v1/sandboxes/{sandbox['sandbox_id']}").status_code == 204


def test_unknown_secret_refused_and_other_tenant_cannot_see_or_use_it(api: httpx.Client, other: httpx.Client) -> None:
    api.put("/v1/secrets/API_TOKEN", json={"value": VALUE})
    refused = deploy(api, "nope", "python", PYTHON_FN, "main.py", {"API_TOKEN": "NO_SUCH_SECRET"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unknown_secret"
    assert other.get("/v1/secrets").json() == {"secrets": []}
    missing = other.get("/v1/secrets/API_TOKEN")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "secret_not_found"
    assert other.delete("/v1/secrets/API_TOKEN").status_code == 404
    stolen = deploy(other, "thief", "python", PYTHON_FN, "main.py", {"API_TOKEN": "API_TOKEN"})
    assert stolen.status_code == 400 and stolen.json()["error"]["code"] == "unknown_secret"
    sandbox = other.post("/v1/sandboxes", json={"secrets": {"API_TOKEN": "API_TOKEN"}})
    assert sandbox.status_code == 400 and sandbox.json()["error"]["code"] == "unknown_secret"
    # Its own secret of the same name is another secret.
    assert other.put("/v1/secrets/API_TOKEN", json={"value": "theirs"}).status_code == 201
    deployed = deploy(other, "theirs", "python", PYTHON_FN, "main.py", {"API_TOKEN": "API_TOKEN"})
    assert deployed.status_code == 201
    assert other.post("/v1/functions/theirs/invoke").text.strip() == hashlib.sha256(b"theirs").hexdigest()
    assert api.get("/v1/secrets/API_TOKEN").json()["version"] >= 1  # untouched by theirs
    erased = other.delete("/v1/tenants/other/data")  # erasure takes the tenant's secrets along
    assert erased.status_code == 200 and erased.json()["deleted"]["secrets"] == 1, erased.text
    assert other.get("/v1/secrets").json() == {"secrets": []}
    assert api.get("/v1/secrets/API_TOKEN").status_code == 200
    bad = api.put("/v1/secrets/bad.name", json={"value": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def sign(api: httpx.Client, method: str, path: str, expires_in: int = 60) -> str:
    answer = api.post("/v1/signed-urls", json={"method": method, "path": path, "expires_in": expires_in})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["method"] == method and body["url"].startswith("http://")
    url: str = body["url"]
    return url


def altered(url: str, new_path: str | None = None, **changes: str) -> str:
    """``url`` with another path and/or query parameters changed (or added)."""
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return f"{parts.scheme}://{parts.netloc}{new_path or parts.path}?{urlencode(query)}"


def refused(response: httpx.Response, code: str) -> bool:
    return response.status_code == 401 and response.json()["error"]["code"] == code


def test_signed_invoke_url_works_once_and_refuses_tampering(api: httpx.Client) -> None:
    for name in ("signed-echo", "signed-other"):
        assert (
            deploy(api, name, "python", b"import sys\nprint('hi', sys.stdin.read())\n", "main.py", {}).status_code
            == 201
        )
    assert httpx.post(f"{api.base_url}/v1/functions/signed-echo/invoke").status_code == 401  # no key, no signature

    url = sign(api, "POST", "/v1/functions/signed-echo/invoke")
    first = httpx.post(url, content=b"there", timeout=60)  # no API key
    assert first.status_code == 200, first.text
    assert first.text == "hi there\n"
    assert refused(httpx.post(url, content=b"again", timeout=60), "signature_replayed")

    url = sign(api, "POST", "/v1/functions/signed-echo/invoke")
    query = dict(parse_qsl(urlsplit(url).query))
    tampered = [
        ("POST", altered(url, "/v1/functions/signed-other/invoke"), "invalid_signature"),
        ("GET", url, "invalid_signature"),  # another method: not even signable
        ("POST", altered(url, sb_exp=str(int(query["sb_exp"]) + 1)), "invalid_signature"),
        ("POST", altered(url, sb_nonce="A" * 24), "invalid_signature"),
        (
            "POST",
            altered(url, sb_sig=("A" if query["sb_sig"][0] != "A" else "B") + query["sb_sig"][1:]),
            "invalid_signature",
        ),
        (
            "POST",
            altered(url, sb_kid=query["sb_kid"][:-1] + ("0" if query["sb_kid"][-1] != "0" else "1")),
            "invalid_signature",
        ),
        ("POST", altered(url, extra="1"), "invalid_signature"),
        ("POST", altered(url, sb_exp="soon"), "invalid_signature"),
    ]
    for method, target, code in tampered:
        assert refused(httpx.request(method, target, timeout=60), code), (method, target)
    # Refused attempts did not burn the nonce: the genuine URL still works, once.
    assert httpx.post(url, timeout=60).status_code == 200
    assert refused(httpx.post(url, timeout=60), "signature_replayed")

    short = sign(api, "POST", "/v1/functions/signed-echo/invoke", expires_in=1)
    time.sleep(2.1)
    assert refused(httpx.post(short, timeout=60), "signature_expired")

    not_signable = api.post("/v1/signed-urls", json={"method": "DELETE", "path": "/v1/functions/signed-echo"})
    assert not_signable.status_code == 400 and not_signable.json()["error"]["code"] == "not_signable"
    too_long = api.post(
        "/v1/signed-urls", json={"method": "POST", "path": "/v1/functions/x/invoke", "expires_in": 10**9}
    )
    assert too_long.status_code == 400


def test_signing_key_rotation_keeps_old_urls_for_the_grace_period(api: httpx.Client) -> None:
    assert deploy(api, "rotated", "python", b"print('ok')\n", "main.py", {}).status_code == 201
    used_in_grace = sign(api, "POST", "/v1/functions/rotated/invoke")
    used_after_grace = sign(api, "POST", "/v1/functions/rotated/invoke")
    rotated = api.post("/v1/signed-urls/rotate")
    assert (
        rotated.status_code == 200
        and rotated.json()["key_id"] != dict(parse_qsl(urlsplit(used_in_grace).query))["sb_kid"]
    )
    fresh = sign(api, "POST", "/v1/functions/rotated/invoke")
    assert dict(parse_qsl(urlsplit(fresh).query))["sb_kid"] == rotated.json()["key_id"]
    assert httpx.post(used_in_grace, timeout=60).text == "ok\n"
    time.sleep(GRACE_S + 0.5)
    answer = httpx.post(used_after_grace, timeout=60)
    assert refused(answer, "invalid_signature") and "grace" in answer.json()["error"]["message"]
    assert httpx.post(fresh, timeout=60).text == "ok\n"


def test_signed_sandbox_file_urls(stack: Stack, api: httpx.Client) -> None:
    created = api.post("/v1/sandboxes", json={"timeout_s": 120})
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    try:
        files = f"/v1/sandboxes/{sandbox_id}/files?path=signed.txt"
        upload = sign(api, "POST", files)
        answer = httpx.post(upload, content=b"uploaded by a signed URL", timeout=60)
        assert answer.status_code == 200, answer.text
        download = sign(api, "GET", files)
        assert httpx.get(altered(download, path="other.txt"), timeout=60).status_code == 401  # the query is signed too
        got = httpx.get(download, timeout=60)
        assert got.status_code == 200 and got.content == b"uploaded by a signed URL"
        assert refused(httpx.get(download, timeout=60), "signature_replayed")
        assert api.get(files).content == b"uploaded by a signed URL"  # the API key works as well
        assert httpx.get(f"{stack.url}{files}", timeout=60).status_code == 401
    finally:
        api.delete(f"/v1/sandboxes/{sandbox_id}")


def restart(stack: Stack, **env: str) -> None:
    """Gateway and worker again, with ``env`` (the master keys) instead of what they had."""
    stack.extra_env.update(env)
    for name in ("gateway", "worker-0"):
        process = stack.processes[name]
        process.terminate()
        process.wait(30)
    stack.spawn("gateway", "soulbox.gateway")
    stack.start_worker("worker-0")
    stack.wait_ready()


def test_master_key_rotation_keeps_secrets_readable(stack: Stack, api: httpx.Client) -> None:
    api.put("/v1/secrets/API_TOKEN", json={"value": VALUE})
    expected = hashlib.sha256(VALUE.encode()).hexdigest()
    restart(
        stack, SOULBOX_SECRETS__MASTER_KEY=b64(KEY_B), SOULBOX_SECRETS__PREVIOUS_MASTER_KEYS=json.dumps([b64(KEY_A)])
    )
    assert api.get("/v1/secrets/API_TOKEN").json()["master_key_id"] == key_id(KEY_B)  # rewrapped at start
    assert api.post("/v1/functions/py-secret/invoke").text.strip() == expected
    restart(stack, SOULBOX_SECRETS__PREVIOUS_MASTER_KEYS="[]")  # the old key is gone for good
    assert api.post("/v1/functions/py-secret/invoke").text.strip() == expected
    signed = sign(api, "POST", "/v1/functions/py-secret/invoke")  # signing keys were rewrapped too
    assert httpx.post(signed, timeout=60).text.strip() == expected
