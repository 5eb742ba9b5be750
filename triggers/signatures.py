"""Webhook signature verification: generic HMAC, GitHub and Stripe.

Every comparison is constant-time (``hmac.compare_digest``). A failure is a
:class:`SignatureError` whose ``code`` is stable: ``signature_missing``,
``signature_invalid`` or ``signature_stale``.

A verified request has a replay identity (:func:`verify`'s result): the same
signed request sent again has the same one (see :mod:`soulbox.triggers.replay`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from soulbox.core.errors import SoulboxError
from soulbox.core.triggerspecs import SignatureScheme, WebhookConfig

HMAC_TIMESTAMP_HEADER = "x-soulbox-timestamp"
HMAC_SIGNATURE_HEADER = "x-soulbox-signature"
GITHUB_HEADER = "x-hub-signature-256"
STRIPE_HEADER = "stripe-signature"
GITHUB_DELIVERY_HEADER = "x-github-delivery"


class SignatureError(SoulboxError):
    """The request is not signed by the trigger's secret (or too long ago)."""

    code = "signature_invalid"


def _mac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def _timestamp(value: str | None) -> int:
    if value is None or not value.strip().isdigit():
        raise SignatureError("the signature timestamp is missing or not an integer", code="signature_missing")
    return int(value.strip())


def _fresh(stamp: int, *, now: float, tolerance_s: int) -> None:
    # Checked after the signature: a replayed old request is told apart from a forged one.
    if abs(now - stamp) > tolerance_s:
        raise SignatureError(f"the signature timestamp is more than {tolerance_s}s away", code="signature_stale")


def _matches(expected: str, candidates: list[str]) -> bool:
    # Check every candidate, so the time taken does not say which one matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(expected.encode(), candidate.strip().lower().encode())
    return found


def sign_hmac(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Soulbox-Signature`` value for ``body`` sent at ``timestamp``."""
    return _mac(secret, f"{timestamp}.".encode() + body)


def _identity(kind: str, value: str) -> str:
    # A digest, not the MAC itself: what is stored to spot replays must not be a valid signature.
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def verify(config: WebhookConfig, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
    """Return the request's replay identity if ``body`` is signed per ``config``.

    Raise :class:`SignatureError` otherwise.
    The identity is a digest of what the sender signed (the expected MAC, so header spelling
    or extra Stripe ``v1=`` values do not change it). GitHub signs no timestamp: its identity
    is the ``X-GitHub-Delivery`` id when present (one per delivery), else the body's MAC.
    ``headers`` must be looked up case-insensitively (Starlette's ``Headers`` is).
    """
    secret = config.secret
    if config.scheme is SignatureScheme.HMAC:
        signature = headers.get(HMAC_SIGNATURE_HEADER)
        if not signature:
            raise SignatureError(f"no {HMAC_SIGNATURE_HEADER} header", code="signature_missing")
        stamp = _timestamp(headers.get(HMAC_TIMESTAMP_HEADER))
        expected = sign_hmac(secret, body, stamp)
        if not _matches(expected, [signature.removeprefix("sha256=")]):
            raise SignatureError("the signature does not match")
        _fresh(stamp, now=now, tolerance_s=config.tolerance_s)
        return _identity("mac", expected)
    elif config.scheme is SignatureScheme.GITHUB:
        signature = headers.get(GITHUB_HEADER)
        if not signature or not signature.startswith("sha256="):
            raise SignatureError(f"no {GITHUB_HEADER} header with a sha256= value", code="signature_missing")
        expected = _mac(secret, body)
        if not _matches(expected, [signature.removeprefix("sha256=")]):
            raise SignatureError("the signature does not match")
        delivery = headers.get(GITHUB_DELIVERY_HEADER, "").strip()
        return _identity("delivery", delivery) if delivery else _identity("mac", expected)
    else:
        header = headers.get(STRIPE_HEADER)
        if not header:
            raise SignatureError(f"no {STRIPE_HEADER} header", code="signature_missing")
        fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
        stamps = [value for key, value in fields if key.strip() == "t"]
        signatures = [value for key, value in fields if key.strip() == "v1"]
        if len(stamps) != 1 or not signatures:
            raise SignatureError(f"{STRIPE_HEADER} needs one t= and at least one v1=", code="signature_missing")
        stamp = _timestamp(stamps[0])
        expected = _mac(secret, f"{stamp}.".encode() + body)
        if not _matches(expected, signatures):
            raise SignatureError("no v1 signature matches")
        _fresh(stamp, now=now, tolerance_s=config.tolerance_s)
        return _identity("mac", expected)
