"""What the gateway's handlers share: connections, buckets and the registry."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from starlette.requests import HTTPConnection

from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.enqueue import accepted_record, enqueue, new_invocation_id
from soulbox.core.errors import Conflict, InvalidRequest
from soulbox.core.schemas import (
    FunctionSpec,
    InvocationRecord,
    InvocationRequest,
)
from soulbox.core.settings import Settings
from soulbox.core.store import get_model
from soulbox.core.tunnel import TunnelClient

from .registry import FunctionRegistry
from .results import ResultWaiter
from .sandboxes.control import SandboxControlPlane

INVOCATION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(slots=True)
class Submission:
    request: InvocationRequest
    duplicate: bool  # the id was submitted before: this call started nothing new
    result: asyncio.Future[Msg] | None = None  # the record's message; set when waiting and not a duplicate


@dataclass(slots=True)
class Platform:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    buckets: Buckets
    registry: FunctionRegistry
    waiter: ResultWaiter
    sandboxes: SandboxControlPlane
    tunnel: TunnelClient

    async def submit(
        self,
        spec: FunctionSpec,
        body: bytes,
        *,
        invocation_id: str | None,
        wait: bool,
        trace_id: str | None,
        trigger: str | None = None,
        callback_url: str | None = None,
    ) -> Submission:
        """Record the invocation as accepted and put it on the invocation stream."""
        client_id = invocation_id is not None
        if invocation_id is None:
            invocation_id = new_invocation_id()
        elif not INVOCATION_ID_RE.match(invocation_id):
            raise InvalidRequest("X-Invocation-Id must be 8-64 characters of [A-Za-z0-9_-]")
        request = InvocationRequest(
            id=invocation_id,
            tenant=spec.tenant,
            function=spec,
            input=body,
            reply_to=self.waiter.reply_subject(invocation_id) if wait else None,
            trace_id=trace_id,
            trigger=trigger,
            callback_url=callback_url,
        )
        record = accepted_record(request)
        if client_id:
            # A caller-chosen id may repeat: claim it atomically; a repeat starts nothing.
            try:
                await self.buckets.invocations.create(invocation_id, encode(record))
            except KeyWrongLastSequenceError:
                first = await get_model(self.buckets.invocations, invocation_id, InvocationRecord)
                if first is not None and first.tenant != spec.tenant:
                    # Another tenant's id: never hand over its record as this call's result.
                    raise Conflict(f"invocation id {invocation_id!r} is taken; choose another") from None
                return Submission(request, duplicate=True)
        result = self.waiter.expect(invocation_id) if wait else None
        try:
            # An async caller polls the record at once; a sync caller gets the result
            # (and the id) in its response, and the worker writes the record.
            ack = await enqueue(
                self.js,
                self.buckets.invocations,
                request,
                record,
                write_record=not client_id and not wait,
                retry_after=self.settings.queue.retry_after_s,
            )
        except BaseException:
            self.waiter.discard(invocation_id)
            raise
        if ack.duplicate:
            self.waiter.discard(invocation_id)
            return Submission(request, duplicate=True)
        return Submission(request, duplicate=False, result=result)


def platform(connection: HTTPConnection) -> Platform:
    p: Platform = connection.app.state.platform
    return p
