"""``/v1/dead-letters``: asynchronous invocations that failed on their last attempt.

Listing reads the dead-letter stream (one subject per invocation); a replay
submits the same input to the function's current version under a new
invocation id, then removes the dead letter.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from nats.js import api
from nats.js.errors import NotFoundError
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core import names
from soulbox.core.codec import decode
from soulbox.core.errors import InvalidRequest, NotFound, SchemaError
from soulbox.core.schemas import DeadLetter

from .invocations import accepted_response
from .models import InvocationErrorOut
from .platform import INVOCATION_ID_RE, platform
from .principal import principal

MAX_LIST = 1000


class DeadLetterNotFound(NotFound):
    code = "dead_letter_not_found"

    def __init__(self, invocation_id: str) -> None:
        super().__init__(f"no dead letter for invocation {invocation_id!r}")


class DeadLetterOut(BaseModel):
    id: str
    function: str
    trigger: str | None
    attempts: int
    status: str
    outcome: str | None
    error: InvocationErrorOut | None
    accepted_at: datetime
    dead_at: datetime
    input_bytes: int

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        request = letter.request
        error = letter.error
        return cls(
            id=request.id,
            function=request.function.name,
            trigger=request.trigger,
            attempts=letter.attempts,
            status=letter.status.value,
            outcome=letter.outcome.value if letter.outcome else None,
            error=InvocationErrorOut(kind=error.kind, message=error.message) if error else None,
            accepted_at=request.accepted_at,
            dead_at=letter.at,
            input_bytes=len(request.input),
        )


async def list_dead_letters(request: Request) -> Response:
    """The tenant's dead letters, oldest first (at most ``limit``, default 100)."""
    p = platform(request)
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise InvalidRequest(f"limit must be 1-{MAX_LIST}")
    limit = int(raw)
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30.0
    )
    sub = await p.js.pull_subscribe(
        names.dead_letters_filter(principal(request).tenant), stream=names.DEAD_LETTERS_STREAM, config=config
    )
    letters: list[DeadLetterOut] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0 and len(letters) < limit:
            msgs = await sub.fetch(min(pending, limit - len(letters), 256), timeout=2.0)
            for msg in msgs:
                try:
                    letters.append(DeadLetterOut.of(decode(DeadLetter, msg.data)))
                except SchemaError:
                    continue
            pending = (msgs[-1].metadata.num_pending or 0) if msgs else 0
    finally:
        await sub.unsubscribe()
    return JSONResponse({"dead_letters": [letter.model_dump(mode="json") for letter in letters]})


async def replay_dead_letter(request: Request) -> Response:
    p = platform(request)
    invocation_id: str = request.path_params["invocation_id"]
    if not INVOCATION_ID_RE.match(invocation_id):
        raise DeadLetterNotFound(invocation_id)
    subject = names.dead_letter_subject(principal(request).tenant, invocation_id)
    try:
        stored = await p.js.get_last_msg(names.DEAD_LETTERS_STREAM, subject)
    except NotFoundError:
        raise DeadLetterNotFound(invocation_id) from None
    if stored.data is None or stored.seq is None:
        raise DeadLetterNotFound(invocation_id)
    letter = decode(DeadLetter, stored.data)
    spec = await p.registry.get(principal(request).tenant, letter.request.function.name)
    # One replay id per dead letter: replays racing each other start one invocation.
    submission = await p.submit(
        spec,
        letter.request.input,
        invocation_id=f"{invocation_id[:40]}-r{stored.seq}",
        wait=False,
        trace_id=letter.request.trace_id,
        trigger=letter.request.trigger,
    )
    # Removed once the replay is queued: a crash in between leaves it to be replayed again.
    with contextlib.suppress(NotFoundError):  # a concurrent replay removed it
        await p.js.delete_msg(names.DEAD_LETTERS_STREAM, stored.seq)
    return accepted_response(request, submission.request.id)
