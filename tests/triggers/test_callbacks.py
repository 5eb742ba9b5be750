"""Completion callbacks: the finished record is POSTed to the caller's URL, retried until accepted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.triggers.helpers import eventually


class Receiver:
    """A real HTTP server that fails the first ``failures`` requests of each invocation with 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = sum(1 for _, b, _ in receiver.calls if b["id"] == body["id"])
                status = 503 if seen < receiver.failures else 204
                receiver.calls.append((status, body, dict(self.headers)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, invocation_id: str) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
        return [c for c in self.calls if c[1]["id"] == invocation_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=1)
    yield r
    r.server.shutdown()


async def test_callback_posted_after_a_failed_delivery(api: httpx.AsyncClient, receiver: Receiver) -> None:
    r = await api.post(
        "/v1/functions/echo/invoke?async=1", content=b"call me", headers={"X-Callback-Url": receiver.url}
    )
    assert r.status_code == 202
    invocation_id = r.json()["id"]

    async def delivered() -> bool:
        return any(status == 204 for status, _, _ in receiver.of(invocation_id))

    await eventually(delivered, timeout=20)
    calls = receiver.of(invocation_id)
    assert [status for status, _, _ in calls] == [503, 204]  # retried once, then done
    _, body, headers = calls[-1]
    assert body["status"] == "completed" and body["stdout"]["data"] == "call me"
    assert headers["Soulbox-Invocation-Id"] == invocation_id


async def test_callback_of_a_failed_function_and_bad_urls(api: httpx.AsyncClient, receiver: Receiver) -> None:
    receiver.failures = 0
    r = await api.post("/v1/functions/trap/invoke?async=1", headers={"X-Callback-Url": receiver.url})
    invocation_id = r.json()["id"]

    async def delivered() -> bool:
        return bool(receiver.of(invocation_id))

    await eventually(delivered, timeout=20)
    assert receiver.of(invocation_id)[0][1]["status"] == "failed"

    sync = await api.post("/v1/functions/echo/invoke", headers={"X-Callback-Url": receiver.url})
    assert sync.status_code == 400
    bad = await api.post("/v1/functions/echo/invoke?async=1", headers={"X-Callback-Url": "file:///etc/passwd"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
