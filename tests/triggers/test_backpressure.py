"""Back-pressure: a full invocation stream makes the gateway answer 429 with Retry-After."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import deploy
from tests.e2e.test_invoke import wait_for
from tests.guests import wasm
from tests.stack import Stack


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("stack"),
        workers=1,
        triggers=0,
        env={"SOULBOX_QUEUE__MAX_MSGS": "3", "SOULBOX_QUEUE__RETRY_AFTER_S": "2"},
    )
    try:
        s.start()  # inside the try: a stack that never gets ready is stopped too
        yield s
    finally:
        s.stop()


def test_full_queue_is_429_with_retry_after(small_queue: Stack) -> None:
    with httpx.Client(base_url=small_queue.url, timeout=30) as api:
        assert deploy(api, "echo", wasm("echo")).status_code in (200, 201)
        scheduler = small_queue.processes["scheduler"]
        scheduler.send_signal(signal.SIGTERM)  # nothing drains the queue now
        scheduler.wait(15)
        accepted = [api.post("/v1/functions/echo/invoke?async=1", content=str(n).encode()) for n in range(3)]
        assert [r.status_code for r in accepted] == [202, 202, 202]
        full = api.post("/v1/functions/echo/invoke?async=1", content=b"one too many")
        assert full.status_code == 429, full.text
        assert full.headers["retry-after"] == "2"
        assert full.json()["error"]["code"] == "overloaded"
        keyed = api.post("/v1/functions/echo/invoke?async=1", content=b"k", headers={"Idempotency-Key": "retry-me"})
        assert keyed.status_code == 429

        small_queue.spawn("scheduler", "soulbox.scheduler")  # drains it
        for r in accepted:
            wait_for(lambda r=r: api.get(r.json()["url"]).json()["status"] == "completed", timeout=30)
        assert api.post("/v1/functions/echo/invoke", content=b"room again").content == b"room again"
        # The refused call left nothing behind: its retry with the same key runs (it is no repeat).
        again = api.post("/v1/functions/echo/invoke", content=b"k", headers={"Idempotency-Key": "retry-me"})
        assert again.status_code == 200 and again.content == b"k" and "idempotent-replayed" not in again.headers
