"""Putting invocations on the stream from the trigger service.

The same steps as the gateway's submit (:mod:`soulbox.core.enqueue`).
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from soulbox.core import names, tracing
from soulbox.core.bus import Buckets
from soulbox.core.enqueue import accepted_record, enqueue, new_invocation_id
from soulbox.core.errors import FunctionNotFound
from soulbox.core.inbox import Inbox
from soulbox.core.schemas import (
    FunctionSpec,
    InvocationRequest,
)
from soulbox.core.store import get_model


class Submitter:
    def __init__(self, js: JetStreamContext, buckets: Buckets, inbox: Inbox) -> None:
        self._js = js
        self._buckets = buckets
        self._inbox = inbox

    async def function(self, tenant: str, name: str) -> FunctionSpec:
        spec = await get_model(self._buckets.functions, names.function_key(tenant, name), FunctionSpec)
        if spec is None:
            raise FunctionNotFound(name)
        return spec

    async def submit(
        self,
        spec: FunctionSpec,
        body: bytes,
        *,
        trigger: str,
        invocation_id: str | None = None,
        wait: bool = False,
        parent: tracing.Context | None = None,
    ) -> tuple[str, asyncio.Future[Msg] | None]:
        """The invocation's id, and when ``wait``, the future of its finished record's message.

        ``parent``: the trace context the triggering message carried; None: a new trace.
        """
        invocation_id = invocation_id or new_invocation_id()
        with tracing.span("trigger", parent=parent, attributes={"soulbox.trigger": trigger}):
            request = InvocationRequest(
                id=invocation_id,
                tenant=spec.tenant,
                function=spec,
                input=body,
                reply_to=self._inbox.subject(invocation_id) if wait else None,
                trigger=trigger,
                trace_id=tracing.current_trace_id(),
            )
            result = self._inbox.expect(invocation_id) if wait else None
            try:
                await enqueue(
                    self._js, self._buckets.invocations, request, accepted_record(request), write_record=not wait
                )
            except BaseException:
                self._inbox.discard(invocation_id)
                raise
        return invocation_id, result

    def discard(self, invocation_id: str) -> None:
        self._inbox.discard(invocation_id)
