"""Queueing completion callbacks: the trigger service delivers them (with retries)."""

from __future__ import annotations

from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.schemas import Callback, InvocationRequest


async def queue_callback(js: JetStreamContext, request: InvocationRequest) -> None:
    """Queue the callback of a finished invocation, once per invocation (de-duplicated by id)."""
    if request.callback_url is None:
        return
    callback = Callback(invocation_id=request.id, tenant=request.tenant, url=request.callback_url)
    await js.publish(
        names.callback_subject(request.tenant), encode(callback), headers={"Nats-Msg-Id": f"{request.id}.callback"}
    )
