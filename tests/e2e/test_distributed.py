"""Many of each: two schedulers share the work; one dying loses nothing."""

from __future__ import annotations

import signal
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
def two_schedulers(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, workers=2)
    s.start()
    s.spawn("scheduler-2", "soulbox.scheduler")
    try:
        yield s
    finally:
        s.stop()


def test_a_scheduler_killed_mid_dispatch_loses_nothing(two_schedulers: Stack) -> None:
    stack = two_schedulers
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        assert deploy(api, "slow", wasm("slow_3s"), timeout_ms=10_000).status_code == 201
        urls = [api.post("/v1/functions/slow/invoke?async=true").json()["url"] for _ in range(6)]
        wait_for(lambda: any(api.get(u).json()["status"] == "running" for u in urls))
        stack.processes["scheduler"].send_signal(signal.SIGKILL)  # holds some dispatches, unacked
        killed = time.monotonic()

        def all_done() -> list[dict[str, object]] | None:
            records = [api.get(u).json() for u in urls]
            return records if all(r["status"] == "completed" for r in records) else None

        records = wait_for(all_done, timeout=45, interval=0.5)
        assert all(r["stdout"]["data"] == "done\n" for r in records)  # type: ignore[index]
        assert time.monotonic() - killed < 40

        def billed() -> int:
            report = api.get("/v1/usage", params={"function": "slow", "granularity": "none"}).json()
            return int(report["total"]["invocations"])

        wait_for(lambda: billed() >= 6)
        time.sleep(1.0)
        assert billed() == 6
