"""KvMirror against a real nats-server: complete at start, current after, never fooled by a busy bucket."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from soulbox.core.codec import encode
from soulbox.core.kvmirror import KvMirror
from soulbox.core.schemas import LimitsRecord
from soulbox.core.store import kv_subject


async def bucket(js: JetStreamContext, name: str) -> KeyValue:
    return await js.create_key_value(bucket=name, history=1)


async def fill(js: JetStreamContext, name: str, count: int, *, offset: int = 0) -> None:
    acks = [
        await js.publish_async(kv_subject(name, f"k{i}"), encode(LimitsRecord(requests_per_s=i + 1)))
        for i in range(offset, offset + count)
    ]
    await asyncio.gather(*acks)


async def eventually(check: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_start_returns_with_every_current_value_of_a_large_bucket(js: JetStreamContext) -> None:
    # Thousands of keys pushed at once is where nats-py's watch marker came before the values.
    kv = await bucket(js, "mirror_large")
    await fill(js, "mirror_large", 3000)
    await kv.delete("k7")
    mirror = KvMirror(kv, LimitsRecord)
    await mirror.start()
    try:
        assert len(mirror.values) == 2999
        assert "k7" not in mirror.values
        assert mirror.values["k2999"].requests_per_s == 3000
    finally:
        await mirror.stop()


async def test_an_empty_bucket_starts_empty_and_then_follows_puts_and_deletes(js: JetStreamContext) -> None:
    kv = await bucket(js, "mirror_follow")
    changes: list[str] = []
    mirror = KvMirror(kv, LimitsRecord)
    mirror.on_change(lambda: changes.append("x"))
    await mirror.start()
    try:
        assert mirror.values == {}
        await kv.put("a", encode(LimitsRecord(requests_per_s=5)))
        await eventually(lambda: "a" in mirror.values)
        assert mirror.values["a"].requests_per_s == 5
        await kv.put("a", encode(LimitsRecord(requests_per_s=6)))
        await eventually(lambda: mirror.values["a"].requests_per_s == 6)
        await kv.delete("a")
        await eventually(lambda: "a" not in mirror.values)
        assert len(changes) == 3  # listeners run for each change after start
    finally:
        await mirror.stop()


async def test_writes_while_starting_are_not_lost(js: JetStreamContext) -> None:
    kv = await bucket(js, "mirror_race")
    await fill(js, "mirror_race", 1000)
    mirror = KvMirror(kv, LimitsRecord)
    writer = asyncio.create_task(fill(js, "mirror_race", 1000, offset=1000))
    await mirror.start()
    await writer
    try:
        await eventually(lambda: len(mirror.values) == 2000)
        assert mirror.values["k1999"].requests_per_s == 2000
    finally:
        await mirror.stop()


async def test_values_that_do_not_decode_are_skipped_and_callbacks_still_run(js: JetStreamContext) -> None:
    kv = await bucket(js, "mirror_bad")
    await kv.put("bad", b"\xc1 not msgpack")
    await kv.put("good", encode(LimitsRecord(requests_per_s=1)))
    seen: list[tuple[str, float | None]] = []
    deleted: list[str] = []
    mirror = KvMirror(
        kv,
        LimitsRecord,
        on_put=lambda key, value: seen.append((key, value.requests_per_s)),
        on_delete=deleted.append,
        keep=False,
    )
    await mirror.start()
    try:
        assert seen == [("good", 1)]
        assert mirror.values == {}  # keep=False: callbacks only
        await kv.delete("good")
        await eventually(lambda: deleted == ["good"])
    finally:
        await mirror.stop()
