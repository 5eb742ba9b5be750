"""Refusing replayed webhooks: each signed request is accepted once, across gateway replicas.

A verified request's replay identity (see :func:`soulbox.triggers.signatures.verify`) is
``create``d in the seen-webhooks bucket; ``create`` fails if the key exists, so of two
gateways receiving the same request at once exactly one accepts it. Keys expire with the
bucket's TTL, which outlasts the largest timestamp tolerance.
"""

from __future__ import annotations

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.errors import Unavailable
from soulbox.core.logging import get_logger

from .signatures import SignatureError

log = get_logger(__name__)


class SignatureReplayed(SignatureError):
    """This signed request was accepted before."""

    code = "signature_replayed"


async def claim(seen: KeyValue, tenant: str, trigger_id: str, identity: str) -> str:
    """Record the request as seen and return its key; raise :class:`SignatureReplayed` if it was."""
    key = names.webhook_seen_key(tenant, trigger_id, identity)
    try:
        await seen.create(key, b"")
    except KeyWrongLastSequenceError:
        raise SignatureReplayed("this signed request was already received") from None
    except Exception as exc:  # nats raises several unrelated types; refuse rather than risk a replay
        raise Unavailable(f"cannot record the webhook as seen: {exc}") from exc
    return key


async def release(seen: KeyValue, key: str) -> None:
    """Forget a claimed request whose invocation was never queued, so the sender may retry it."""
    try:
        await seen.delete(key)
    except Exception as exc:  # the claim then expires with the bucket's TTL
        log.warning("webhook.release_failed", key=key, error=repr(exc))
