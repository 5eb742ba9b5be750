"""A sandbox's log on a real JetStream: batches, the end, reading back at once and following."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from soulbox.core.bus import Buckets
from soulbox.core.sandboxes import SandboxLogLine
from soulbox.core.sandboxlog import SandboxLogPublisher, has_sandbox_log, read_sandbox_log
from soulbox.core.schemas import utcnow


def _line(text: str) -> SandboxLogLine:
    return SandboxLogLine(at=utcnow(), message=text)


async def test_lines_are_read_back_right_after_they_are_stored(js: JetStreamContext, buckets: Buckets) -> None:
    out = SandboxLogPublisher(js, tenant="acme", sandbox_id="abcdef012345")
    out.write(_line("one"))
    await out.close()
    for _ in range(20):  # read at once, repeatedly: a reader never misses lines pushed before it asked
        got = [line.message async for line in read_sandbox_log(js, "acme", "abcdef012345", follow=False)]
        assert got == ["one"]
    assert await has_sandbox_log(js, "acme", "abcdef012345")
    assert not await has_sandbox_log(js, "other", "abcdef012345")


async def test_follow_ends_with_the_sandbox(js: JetStreamContext, buckets: Buckets) -> None:
    out = SandboxLogPublisher(js, tenant="acme", sandbox_id="fedcba987654")

    async def follow() -> list[str]:
        return [line.message async for line in read_sandbox_log(js, "acme", "fedcba987654", follow=True)]

    follower = asyncio.create_task(follow())
    for i in range(1200):  # more than one batch
        out.write(_line(f"l{i}"))
    await asyncio.sleep(0.3)
    assert not follower.done()
    await out.close()
    assert await asyncio.wait_for(follower, 5) == [f"l{i}" for i in range(1200)]
