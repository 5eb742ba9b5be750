"""SoulBox's own /v1/sandboxes API and the data plane's edges, through the stack's gateway."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.e2e.conftest import API_KEY
from tests.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": API_KEY}, timeout=60) as c:
        yield c


def envd_daemons() -> list[int]:
    """Host pids of every sandbox daemon (envd) on this machine."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"-m", b"envd"]:
                pids.append(int(entry))
    return pids


def settle(expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while len(envd_daemons()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(envd_daemons())


def test_keys_are_required_and_errors_are_json(stack: Stack, client: httpx.Client) -> None:
    anonymous = httpx.post(f"{stack.url}/v1/sandboxes", json={}, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    wrong = httpx.get(f"{stack.url}/v1/sandboxes", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    cases = [
        ({"template": "no-such-template"}, 404, "template_not_found"),
        ({"timeout_s": 0}, 400, "invalid_request"),
        ({"timeout_s": 10**9}, 400, "invalid_request"),
        ({"surprise": 1}, 400, "invalid_request"),
    ]
    for body, status, code in cases:
        response = client.post("/v1/sandboxes", json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    bad_json = client.post("/v1/sandboxes", content=b"{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    for method, path in [
        ("GET", "/v1/sandboxes/0123456789abcdef0123"),
        ("DELETE", "/v1/sandboxes/0123456789abcdef0123"),
    ]:
        missing = client.request(method, path)
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "sandbox_not_found")
    assert client.get("/v1/sandboxes/BAD!").json()["error"]["code"] == "invalid_request"


def test_lifecycle_leaves_nothing_behind(stack: Stack, client: httpx.Client) -> None:
    before = settle(len(envd_daemons()))
    seconds_before = next(
        (u["sandbox_seconds"] for u in client.get("/v1/usage").json()["functions"] if u["function"] == "base"), 0.0
    )
    created = client.post("/v1/sandboxes", json={"timeout_s": 60, "metadata": {"k": "v"}, "env_vars": {"A": "1"}})
    assert created.status_code == 201, created.text
    sandbox = created.json()
    sid = sandbox["sandbox_id"]
    assert sandbox["state"] == "running" and sandbox["access_token"]
    shown = client.get(f"/v1/sandboxes/{sid}").json()
    assert shown["metadata"] == {"k": "v"} and "access_token" not in shown  # the token is shown once
    assert sid in [s["sandbox_id"] for s in client.get("/v1/sandboxes").json()["sandboxes"]]

    health = client.get("/health", headers={"E2b-Sandbox-Id": sid})
    assert health.status_code == 204
    no_token = client.get("/envs", headers={"E2b-Sandbox-Id": sid})
    assert no_token.status_code == 401
    envs = client.get("/envs", headers={"E2b-Sandbox-Id": sid, "X-Access-Token": sandbox["access_token"]})
    assert envs.json()["A"] == "1"

    assert client.post(f"/v1/sandboxes/{sid}/pause").json()["state"] == "paused"
    again = client.post(f"/v1/sandboxes/{sid}/pause")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "sandbox_paused")
    assert client.get("/health", headers={"E2b-Sandbox-Id": sid}).status_code == 502  # paused: not serving
    assert client.get("/v1/sandboxes", params={"state": "paused"}).json()["sandboxes"][0]["sandbox_id"] == sid
    assert client.post(f"/v1/sandboxes/{sid}/resume").json()["state"] == "running"
    lines = [line["message"] for line in client.get(f"/v1/sandboxes/{sid}/logs").json()["logs"]]
    assert lines[-3:] == ["sandbox.created", "sandbox.paused", "sandbox.resumed"] and "envd ready" in lines
    timed = client.post(f"/v1/sandboxes/{sid}/timeout", json={"timeout_s": 3600})
    assert timed.status_code == 200 and timed.json()["end_at"] > shown["end_at"]
    samples = client.get(f"/v1/sandboxes/{sid}/metrics").json()["metrics"]
    assert samples and samples[-1]["mem_used"] > 0 and samples[-1]["mem_total"] == 512 * 1024 * 1024

    # Every second, the worker's samples reach the metrics consumer's per-sandbox gauges.
    deadline = time.monotonic() + 10
    series = f'soulbox_sandbox_memory_used_bytes{{sandbox_id="{sid}"'
    while series not in (text := httpx.get(stack.metrics_url, timeout=5).text) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert series in text

    assert client.delete(f"/v1/sandboxes/{sid}").status_code == 204
    # Billed exactly: the running period before the pause and the one after the resume, per template.
    deadline = time.monotonic() + 15
    while True:
        usage = client.get("/v1/usage", params={"function": "base"}).json()
        periods = [u for u in usage["functions"] if u["function"] == "base"]
        if (periods and periods[0]["sandbox_seconds"] >= seconds_before) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert periods and periods[0]["sandbox_seconds"] > seconds_before
    assert client.get(f"/v1/sandboxes/{sid}").status_code == 404
    assert client.get("/health", headers={"E2b-Sandbox-Id": sid}).status_code == 502
    assert settle(before) == before  # the sandbox's daemon is gone (the pool was topped up meanwhile)


def test_unknown_sandboxes_on_the_data_plane(stack: Stack) -> None:
    by_header = httpx.get(f"{stack.url}/health", headers={"E2b-Sandbox-Id": "0123456789abcdef0123"}, timeout=10)
    assert by_header.status_code == 502 and by_header.json()["error_code"] == "sandbox_not_found"
    by_host = httpx.get(f"{stack.url}/", headers={"Host": "8080-0123456789abcdef0123.sandbox.localhost"}, timeout=10)
    assert by_host.status_code == 502
    # An ordinary host is the API, not a sandbox.
    assert httpx.get(f"{stack.url}/healthz", timeout=10).json() == {"status": "ok"}


async def test_a_pty_terminal_over_websocket(stack: Stack) -> None:
    client = httpx.AsyncClient(base_url=stack.url, headers={"X-API-KEY": API_KEY}, timeout=60)
    sid = (await client.post("/v1/sandboxes", json={"timeout_s": 60})).json()["sandbox_id"]
    url = f"ws://127.0.0.1:{stack.gateway_port}/v1/sandboxes/{sid}/pty?cols=100&rows=30&api_key={API_KEY}"
    try:
        async with websockets.connect(url) as ws:
            await ws.send(b"stty size; tty\n")
            before = await read_until(ws, "30 100")  # `tty`'s answer may come in this read or the next
            await ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
            await ws.send(b"stty size; exit 7\n")
            seen = await read_until(ws, '"type": "exit"')
            assert "40 120" in seen and "/dev/pts/" in before + seen
            assert json.loads(seen[seen.rindex("{") :]) == {"type": "exit", "exit_code": 7}
        with pytest.raises(websockets.InvalidStatus):  # refused before the upgrade: no key
            async with websockets.connect(url.replace(API_KEY, "wrong")):
                pass
    finally:
        await client.delete(f"/v1/sandboxes/{sid}")
        await client.aclose()


async def read_until(ws: websockets.ClientConnection, marker: str, timeout: float = 10.0) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            frame = await ws.recv()
            seen += frame.decode(errors="replace") if isinstance(frame, bytes) else frame
    return seen
