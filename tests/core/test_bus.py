from __future__ import annotations

from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import ensure_topology
from soulbox.core.settings import Settings


async def test_topology_is_idempotent_and_dedupes_by_invocation_id(js: JetStreamContext, settings: Settings) -> None:
    await ensure_topology(js, settings)
    buckets = await ensure_topology(js, settings)  # a second component starting up
    info = await js.stream_info(names.INVOCATIONS_STREAM)
    assert str(info.config.retention) in ("workqueue", "RetentionPolicy.WORK_QUEUE")
    first = await js.publish("sb.invocations.default", b"x", headers={"Nats-Msg-Id": "inv-1"})
    again = await js.publish("sb.invocations.default", b"x", headers={"Nats-Msg-Id": "inv-1"})
    assert not first.duplicate and again.duplicate
    assert (await js.stream_info(names.INVOCATIONS_STREAM)).state.messages == 1
    await buckets.functions.put("default.f", b"1")
    assert (await buckets.functions.get("default.f")).value == b"1"
