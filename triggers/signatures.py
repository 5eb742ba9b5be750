"""Webhook signature verification: generic HMAC, GitHub and Stripe.

Every comparison is constant-time (``hmac.compare_digest``). A failure is a
:class:`SignatureError` whose ``code`` is stable: ``signature_missing``,
``signature_invalid`` or ``signature_stale``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from soulbox.core.errors import SoulboxError
from soulbox.core.schemas import SignatureScheme, WebhookConfig

HMAC_TIMESTAMP_HEADER = "x-soulbox-timestamp"
HMAC_SIGNATURE_HEADER = "x-soulbox-signature"
GITHUB_HEADER = "x-hub-signature-256"
STRIPE_HEADER = "stripe-signature"


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


def verify(config: WebhookConfig, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
    """Return if ``body`` is signed per ``config``; raise :class:`SignatureError` otherwise.

    ``headers`` must be looked up case-insensitively (Starlette's ``Headers`` is).
    """
    secret = config.secret
    if config.scheme is SignatureScheme.HMAC:
        signature = headers.get(HMAC_SIGNATURE_HEADER)
        if not signature:
            raise SignatureError(f"no {HMAC_SIGNATURE_HEADER} header", code="signature_missing")
        stamp = _timestamp(headers.get(HMAC_TIMESTAMP_HEADER))
        if not _matches(sign_hmac(secret, body, stamp), [signature.removeprefix("sha256=")]):
            raise SignatureError("the signature does not match")
        _fresh(stamp, now=now, tolerance_s=config.tolerance_s)
    elif config.scheme is SignatureScheme.GITHUB:
        signature = headers.get(GITHUB_HEADER)
        if not signature or not signature.startswith("sha256="):
            raise SignatureError(f"no {GITHUB_HEADER} header with a sha256= value", code="signature_missing")
        if not _matches(_mac(secret, body), [signature.removeprefix("sha256=")]):
            raise SignatureError("the signature does not match")
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
        if not _matches(_mac(secret, f"{stamp}.".encode() + body), signatures):
            raise SignatureError("no v1 signature matches")
        _fresh(stamp, now=now, tolerance_s=config.tolerance_s)
