"""Webhook signature verification, format by format (the HTTP side is in test_webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from soulbox.core.triggerspecs import SignatureScheme, WebhookConfig
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


def identity(scheme: SignatureScheme, headers: dict[str, str], body: bytes) -> str:
    return verify(config(scheme), Headers(headers), body, now=NOW)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_replay_identity_is_what_was_signed(body: bytes, other: bytes) -> None:
    sig = sign_hmac(SECRET, body, NOW)
    plain = identity(SignatureScheme.HMAC, {"X-Soulbox-Timestamp": str(NOW), "X-Soulbox-Signature": sig}, body)
    respelt = {"X-Soulbox-Timestamp": f" {NOW}", "X-Soulbox-Signature": "sha256=" + sig.upper()}
    assert identity(SignatureScheme.HMAC, respelt, body) == plain
    later = {"X-Soulbox-Timestamp": str(NOW + 1), "X-Soulbox-Signature": sign_hmac(SECRET, body, NOW + 1)}
    assert identity(SignatureScheme.HMAC, later, body) != plain
    assert sig not in plain  # the stored identity is not itself a valid signature
    good = mac(f"{NOW}.".encode() + body)
    padded = f"t={NOW},v1={'0' * 64},v1={good}"
    assert identity(SignatureScheme.STRIPE, {"Stripe-Signature": f"t={NOW},v1={good}"}, body) == identity(
        SignatureScheme.STRIPE, {"Stripe-Signature": padded}, body
    )
    if other != body:
        other_sig = {"X-Soulbox-Timestamp": str(NOW), "X-Soulbox-Signature": sign_hmac(SECRET, other, NOW)}
        assert identity(SignatureScheme.HMAC, other_sig, other) != plain


def test_github_identity_is_the_delivery_else_the_body() -> None:
    body = b'{"action":"opened"}'
    signature = {"X-Hub-Signature-256": "sha256=" + mac(body)}
    first = identity(SignatureScheme.GITHUB, {**signature, "X-GitHub-Delivery": "a-1"}, body)
    assert first == identity(SignatureScheme.GITHUB, {**signature, "X-GitHub-Delivery": "a-1"}, body)
    assert first != identity(SignatureScheme.GITHUB, {**signature, "X-GitHub-Delivery": "a-2"}, body)
    bare = identity(SignatureScheme.GITHUB, signature, body)
    assert bare not in (first, identity(SignatureScheme.GITHUB, {"X-Hub-Signature-256": "sha256=" + mac(b"x")}, b"x"))
