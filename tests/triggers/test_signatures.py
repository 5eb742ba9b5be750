"""Webhook signature verification, format by format (the HTTP side is in test_webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from soulbox.core.schemas import SignatureScheme, WebhookConfig
from soulbox.triggers.signatures import SignatureError, sign_hmac, verify

SECRET = "s3cret-s3cret-s3cret"
NOW = 1_700_000_000


def config(scheme: SignatureScheme) -> WebhookConfig:
    return WebhookConfig(scheme=scheme, secret=SECRET, tolerance_s=300)


def mac(payload: bytes) -> str:
    return hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()


def code_of(scheme: SignatureScheme, headers: dict[str, str], body: bytes) -> str | None:
    try:
        verify(config(scheme), Headers(headers), body, now=NOW)
    except SignatureError as exc:
        return exc.code
    return None


@given(st.binary(max_size=256))
def test_hmac_accepts_its_own_signature_and_nothing_else(body: bytes) -> None:
    headers = {"X-Soulbox-Timestamp": str(NOW), "X-Soulbox-Signature": sign_hmac(SECRET, body, NOW)}
    assert code_of(SignatureScheme.HMAC, headers, body) is None
    assert code_of(SignatureScheme.HMAC, headers, body + b"x") == "signature_invalid"
    shifted = {**headers, "X-Soulbox-Timestamp": str(NOW + 1)}
    assert code_of(SignatureScheme.HMAC, shifted, body) == "signature_invalid"  # the timestamp is signed too


def test_hmac_stale_and_missing() -> None:
    old = NOW - 301
    headers = {"X-Soulbox-Timestamp": str(old), "X-Soulbox-Signature": sign_hmac(SECRET, b"{}", old)}
    assert code_of(SignatureScheme.HMAC, headers, b"{}") == "signature_stale"
    assert code_of(SignatureScheme.HMAC, {"X-Soulbox-Signature": "00"}, b"{}") == "signature_missing"
    assert code_of(SignatureScheme.HMAC, {}, b"{}") == "signature_missing"


def test_github() -> None:
    body = b'{"action":"opened"}'
    assert code_of(SignatureScheme.GITHUB, {"X-Hub-Signature-256": "sha256=" + mac(body)}, body) is None
    assert code_of(SignatureScheme.GITHUB, {"X-Hub-Signature-256": "sha256=" + mac(b"other")}, body) == (
        "signature_invalid"
    )
    assert code_of(SignatureScheme.GITHUB, {"X-Hub-Signature-256": mac(body)}, body) == "signature_missing"


def test_stripe_takes_any_v1_and_checks_age() -> None:
    body = b'{"type":"charge.succeeded"}'
    good = mac(f"{NOW}.".encode() + body)
    header = f"t={NOW},v1={'0' * 64},v1={good},v0=whatever"
    assert code_of(SignatureScheme.STRIPE, {"Stripe-Signature": header}, body) is None
    assert code_of(SignatureScheme.STRIPE, {"Stripe-Signature": f"t={NOW},v1={'0' * 64}"}, body) == "signature_invalid"
    old = NOW - 1000
    stale = f"t={old},v1={mac(f'{old}.'.encode() + body)}"
    assert code_of(SignatureScheme.STRIPE, {"Stripe-Signature": stale}, body) == "signature_stale"
    assert code_of(SignatureScheme.STRIPE, {"Stripe-Signature": f"v1={good}"}, body) == "signature_missing"


@pytest.mark.parametrize("scheme", list(SignatureScheme))
@given(header=st.text(max_size=200))
def test_garbage_headers_never_crash(scheme: SignatureScheme, header: str) -> None:
    names = {"X-Soulbox-Signature": header, "X-Soulbox-Timestamp": header, "X-Hub-Signature-256": header}
    headers = {**names, "Stripe-Signature": header}
    latin = {k: v.encode("utf-8", "replace").decode("latin-1") for k, v in headers.items()}
    assert code_of(scheme, latin, b"body") in {"signature_invalid", "signature_missing", "signature_stale"}
