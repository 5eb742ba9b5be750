"""Retries of failed asynchronous invocations, and the dead-letter stream.

A caller that waits (a synchronous invoke) gets the first attempt's result;
an asynchronous invocation is tried up to its function's
``retry.max_attempts`` times, with exponential backoff and jitter between
attempts (JetStream holds the message meanwhile, so any scheduler takes the
next attempt). One that fails on its last attempt goes to the dead-letter
stream with its request and last error, once per invocation.
"""

from __future__ import annotations

import random

from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.logging import get_logger
from soulbox.core.schemas import DeadLetter, InvocationRecord, InvocationRequest, Status

log = get_logger(__name__)


def is_final(request: InvocationRequest, attempt: int) -> bool:
    """Whether a failure of ``attempt`` ends the invocation."""
    policy = request.function.retry
    return request.reply_to is not None or policy is None or attempt >= policy.max_attempts


def backoff_s(request: InvocationRequest, attempt: int) -> float:
    policy = request.function.retry
    return 0.0 if policy is None else policy.delay_s(attempt, random.random())


async def dead_letter(
    js: JetStreamContext, request: InvocationRequest, record: InvocationRecord | None, *, attempt: int
) -> None:
    """Publish the dead letter (de-duplicated by invocation id) and wait for the stream to have it."""
    letter = DeadLetter(
        request=request,
        attempts=record.attempt if record is not None else attempt,
        status=record.status if record is not None else Status.FAILED,
        outcome=record.outcome if record is not None else None,
        error=record.error if record is not None else None,
    )
    await js.publish(
        names.dead_letter_subject(request.tenant, request.id),
        encode(letter),
        headers={"Nats-Msg-Id": f"{request.id}.dead"},
    )
    log.warning("scheduler.dead_lettered", attempts=letter.attempts)
