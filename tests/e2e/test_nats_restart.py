"""A NATS restart loses no accepted invocation and runs none twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import deploy
from tests.e2e.test_invoke import wait_for
from tests.guests import wasm
from tests.stack import Stack


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, workers=1)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_invocations_accepted_before_a_nats_restart_all_complete_once(own_stack: Stack) -> None:
    with httpx.Client(base_url=own_stack.url, timeout=30) as api:
        assert deploy(api, "slow", wasm("slow"), timeout_ms=5000).status_code == 201
        urls = [api.post("/v1/functions/slow/invoke?async=true").json()["url"] for _ in range(12)]
        time.sleep(0.5)  # some finished, one running, the rest queued
        own_stack.nats.stop()
        time.sleep(1.0)
        own_stack.nats.start()

        def all_done() -> list[dict[str, object]] | None:
            try:
                records = [api.get(url).json() for url in urls]
            except httpx.HTTPError:
                return None
            return records if all(r.get("status") == "completed" for r in records) else None

        records = wait_for(all_done, timeout=60, interval=0.5)
        assert all(r["stdout"]["data"] == "done\n" for r in records)  # type: ignore[index]

        # The stack still takes new work after the restart, at once.
        started = time.monotonic()
        response = api.post("/v1/functions/slow/invoke")
        assert response.status_code == 200 and response.content == b"done\n"
        assert time.monotonic() - started < 2.0

        # Every accepted invocation billed exactly once.
        def billed() -> dict[str, object] | None:
            report = api.get("/v1/usage", params={"function": "slow", "granularity": "none"}).json()
            return report if report["total"]["invocations"] >= 13 else None

        assert wait_for(billed, timeout=30)["total"]["invocations"] == 13  # type: ignore[index]
        time.sleep(1.0)
        report = api.get("/v1/usage", params={"function": "slow", "granularity": "none"}).json()
        assert report["total"]["invocations"] == 13
