"""Invocation logs through the whole stack: stored in JetStream, read after the fact, followed live, tenant-scoped."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from soulbox.core.natsserver import free_port
from tests.e2e.conftest import API_KEY
from tests.e2e.test_streaming import source
from tests.stack import Stack


@pytest.fixture(scope="module")
def other_tenant(stack: Stack) -> Iterator[httpx.Client]:
    """A second gateway on the same NATS whose callers act as tenant ``other``."""
    port = free_port()
    process = stack.spawn("gateway-other", "soulbox.gateway", SOULBOX_GATEWAY__PORT=str(port), SOULBOX_TENANT="other")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, stack.log("gateway-other")
        time.sleep(0.1)
    try:
        with httpx.Client(base_url=url, headers={"X-API-KEY": API_KEY}, timeout=30) as client:
            yield client
    finally:
        process.terminate()
        process.wait(10)
        stack.processes.pop("gateway-other", None)


def data(entry: dict[str, Any]) -> bytes:
    raw: str = entry["data"]
    return base64.b64decode(raw) if entry.get("encoding") == "base64" else raw.encode()


def test_logs_of_a_finished_invocation(api: httpx.Client) -> None:
    source(api, "chatty", "shell", "echo out1\necho err1 >&2\nsleep 0.2\necho out2\n")
    response = api.post("/v1/functions/chatty/invoke")
    assert response.status_code == 200 and response.content == b"out1\nout2\n"
    invocation_id = response.headers["x-invocation-id"]
    logs = api.get(f"/v1/invocations/{invocation_id}/logs")  # stored by the time the caller has the result
    assert logs.status_code == 200, logs.text
    body = logs.json()
    assert body["invocation_id"] == invocation_id and body["finished"] is True
    entries = body["entries"]
    out = [e for e in entries if e["type"] == "output"]
    assert b"".join(data(e) for e in out if e["stream"] == "stdout") == b"out1\nout2\n"
    assert b"".join(data(e) for e in out if e["stream"] == "stderr") == b"err1\n"
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(e["timestamp"].endswith("Z") and e["attempt"] == 1 for e in entries)
    end = entries[-1]
    assert end["type"] == "end" and end["status"] == "completed" and end["exit_code"] == 0
    # a cursor skips what was read
    rest = api.get(f"/v1/invocations/{invocation_id}/logs", params={"after": entries[0]["cursor"]}).json()
    assert [e["seq"] for e in rest["entries"]] == [e["seq"] for e in entries[1:]]


def test_follow_streams_live_and_ends_with_the_invocation(api: httpx.Client) -> None:
    source(api, "ticker", "shell", "echo tick\nsleep 3\necho tock\n", timeout_ms=10000)
    accepted = api.post("/v1/functions/ticker/invoke", params={"async": "true"})
    invocation_id = accepted.json()["id"]
    lines: list[tuple[float, dict[str, Any]]] = []
    with api.stream("GET", f"/v1/invocations/{invocation_id}/logs", params={"follow": "true"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if line:
                lines.append((time.monotonic(), json.loads(line)))
    ended_at = time.monotonic()
    entries = [e for _, e in lines]
    assert [data(e) for e in entries if e["type"] == "output"] == [b"tick\n", b"tock\n"]
    assert entries[-1]["type"] == "end" and entries[-1]["status"] == "completed"
    assert lines[1][0] - lines[0][0] > 1.5  # "tick" arrived while the function slept
    assert ended_at - lines[-1][0] < 1.0  # the stream closed with the end entry
    record = api.get(f"/v1/invocations/{invocation_id}").json()
    assert record["status"] == "completed"
    # following a finished invocation returns its whole log at once
    again = api.get(f"/v1/invocations/{invocation_id}/logs", params={"follow": "true"})
    assert [json.loads(x)["seq"] for x in again.text.splitlines()] == [e["seq"] for e in entries]


def test_logs_hold_the_output_cap(api: httpx.Client) -> None:
    code = "head -c 5000 /dev/zero | tr '\\0' a\nhead -c 7000 /dev/zero | tr '\\0' b >&2\n"
    source(api, "flood", "shell", code, max_output_bytes=1000)
    response = api.post("/v1/functions/flood/invoke")
    assert response.status_code == 200 and response.headers["x-stdout-truncated"] == "true"
    entries = api.get(f"/v1/invocations/{response.headers['x-invocation-id']}/logs").json()["entries"]
    out = [e for e in entries if e["type"] == "output"]
    assert b"".join(data(e) for e in out if e["stream"] == "stdout") == b"a" * 1000
    assert b"".join(data(e) for e in out if e["stream"] == "stderr") == b"b" * 1000
    end = entries[-1]
    assert end["stdout_bytes"] == 5000 and end["stderr_bytes"] == 7000
    assert end["stdout_truncated"] is True and end["stderr_truncated"] is True


def test_logs_of_a_failed_invocation_carry_its_error(api: httpx.Client) -> None:
    source(api, "crasher", "python", "import sys\nprint('about to fail')\nsys.exit(5)\n")
    response = api.post("/v1/functions/crasher/invoke")
    assert response.status_code == 502
    invocation_id = response.json()["error"]["invocation_id"]
    entries = api.get(f"/v1/invocations/{invocation_id}/logs").json()["entries"]
    assert data(entries[0]) == b"about to fail\n"
    assert entries[-1]["status"] == "failed" and entries[-1]["error"]["code"] == "function_error"


def test_other_tenants_get_404(api: httpx.Client, other_tenant: httpx.Client) -> None:
    source(api, "private", "shell", "echo secret\n")
    invocation_id = api.post("/v1/functions/private/invoke").headers["x-invocation-id"]
    assert api.get(f"/v1/invocations/{invocation_id}/logs").status_code == 200
    for params in ({}, {"follow": "true"}):
        refused = other_tenant.get(f"/v1/invocations/{invocation_id}/logs", params=params)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "invocation_not_found"
    assert other_tenant.get(f"/v1/invocations/{invocation_id}").status_code == 404
    assert api.get("/v1/invocations/nosuchinvocation/logs").status_code == 404
    assert api.get(f"/v1/invocations/{invocation_id}/logs", params={"after": "-1"}).status_code == 400


def test_sandbox_logs_are_kept_after_it_ends_and_followable(api: httpx.Client, other_tenant: httpx.Client) -> None:
    created = api.post("/v1/sandboxes", json={"timeout_s": 120})
    assert created.status_code == 201, created.text
    sid = created.json()["sandbox_id"]
    live = api.get(f"/v1/sandboxes/{sid}/logs")
    assert live.status_code == 200
    assert "sandbox.created" in [line["message"] for line in live.json()["logs"]]
    assert other_tenant.get(f"/v1/sandboxes/{sid}/logs").status_code == 404

    followed: list[str] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            with api.stream("GET", f"/v1/sandboxes/{sid}/logs", params={"follow": "true"}) as response:
                assert response.status_code == 200
                followed.extend(json.loads(x)["message"] for x in response.iter_lines() if x)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(1.0)
    assert follower.is_alive()  # following a running sandbox waits for more
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
    follower.join(15)
    assert not follower.is_alive() and not errors, errors  # the end of the sandbox ends the follow
    assert followed[-1] == "sandbox.killed (killed)" and "sandbox.created" in followed

    after = api.get(f"/v1/sandboxes/{sid}/logs")  # the sandbox is gone; its log is not
    assert after.status_code == 200
    assert [line["message"] for line in after.json()["logs"]] == followed
    e2b = api.get(f"/sandboxes/{sid}/logs")
    assert e2b.status_code == 200, e2b.text
    assert e2b.json()["logs"][-1]["line"] == "sandbox.killed (killed)"
    assert other_tenant.get(f"/v1/sandboxes/{sid}/logs", params={"follow": "true"}).status_code == 404
