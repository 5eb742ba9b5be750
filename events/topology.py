"""The durable that reads lifecycle events once for billing, audit and metrics.

One durable, ``events`` on ``SB_EVENTS``, feeds all three recorders in one
process (:mod:`.fanout`): every event is delivered, decoded and acknowledged
once instead of once per recorder. It is declared with

- ``AckPolicy.ALL``: one ack per batch (acking a message acknowledges every
  earlier one), sound only while a single process is served at a time;
- a **pinned-client priority group** (nats-server 2.11+): the server delivers
  to one subscription only (the pinned one, named in each pull request); the
  requests of every other process (hot standbys: run as many as you like, on
  any node of the cluster) wait. The pin moves when its holder gives it up
  (a clean stop unpins) or has sent no pull request for ``pin_timeout_s``,
  which is longer than ``ack_wait_s``: by then every message the old holder
  took unacknowledged is due for redelivery, and the server hands those out
  before anything newer, so the new holder's acks cannot cover an event the
  old one never recorded.

The durables of the previous design (``billing``, ``audit``, ``metrics``, each
reading every event) are migrated on start: the new durable starts after the
lowest of their ack floors (what some of them saw again is recorded
idempotently), then they are deleted.
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from soulbox.core import names
from soulbox.core.errors import Unavailable
from soulbox.core.logging import get_logger
from soulbox.core.settings import EventsSettings

log = get_logger(__name__)

MAX_ACK_PENDING = 20_000


def consumer_config(settings: EventsSettings, *, start_seq: int | None = None) -> dict[str, Any]:
    """The JSON configuration of the events durable (nats-py's ``ConsumerConfig`` lacks priority groups)."""
    if settings.pin_timeout_s <= settings.ack_wait_s:
        raise ValueError("events.pin_timeout_s must be longer than events.ack_wait_s (see events/topology.py)")
    config: dict[str, Any] = {
        "durable_name": names.EVENTS_CONSUMER,
        "name": names.EVENTS_CONSUMER,
        "ack_policy": "all",
        "ack_wait": int(settings.ack_wait_s * 1e9),
        "max_ack_pending": MAX_ACK_PENDING,
        "max_deliver": -1,
        "deliver_policy": "all",
        "replay_policy": "instant",
        "priority_policy": "pinned_client",
        "priority_groups": [names.EVENTS_CONSUMER],
        "priority_timeout": int(settings.pin_timeout_s * 1e9),
    }
    if start_seq is not None and start_seq > 1:
        config.update(deliver_policy="by_start_sequence", opt_start_seq=start_seq)
    return config


async def _api(nc: NATS, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=10)
    answer: dict[str, Any] = json.loads(reply.data)
    error = answer.get("error")
    if error is not None:
        raise Unavailable(f"{subject}: {error.get('description')} ({error.get('err_code')})")
    return answer


async def _info(js: JetStreamContext, durable: str) -> ConsumerInfo | None:
    try:
        info: ConsumerInfo = await js.consumer_info(names.EVENTS_STREAM, durable)
    except NotFoundError:
        return None
    return info


async def ensure_events_consumer(nc: NATS, js: JetStreamContext, settings: EventsSettings) -> None:
    """Declare the events durable (converging its timeouts), migrating the legacy durables."""
    legacy = {d: info for d in names.EVENT_CONSUMERS if (info := await _info(js, d)) is not None}
    stream = names.EVENTS_STREAM
    current = await _info(js, names.EVENTS_CONSUMER)
    if current is None:
        floors = [info.ack_floor.stream_seq if info.ack_floor is not None else 0 for info in legacy.values()]
        start = min(floors) + 1 if floors else None
        body = {"stream_name": stream, "config": consumer_config(settings, start_seq=start), "action": "create"}
        try:
            await _api(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{names.EVENTS_CONSUMER}", body)
        except Unavailable:
            if await _info(js, names.EVENTS_CONSUMER) is None:  # not a concurrent start that won
                raise
        log.info("events.consumer.created", start_seq=start, migrated=sorted(legacy))
    else:
        raw = await _api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{names.EVENTS_CONSUMER}", {})
        config: dict[str, Any] = raw["config"]
        wanted = consumer_config(settings)
        changed = {k: wanted[k] for k in ("ack_wait", "priority_timeout") if config.get(k) != wanted[k]}
        if changed:
            body = {"stream_name": stream, "config": {**config, **changed}, "action": "update"}
            await _api(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{names.EVENTS_CONSUMER}", body)
    for durable in legacy:
        try:
            await js.delete_consumer(stream, durable)
        except NotFoundError:  # another events process deleted it first
            continue
        log.info("events.legacy_consumer_deleted", consumer=durable)
