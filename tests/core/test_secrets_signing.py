"""The signed-URL format (property tests of the parser and verifier) and the tenants' signing keys."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soulbox.core.bus import Buckets
from soulbox.core.secrets import MasterKeys
from soulbox.core.secrets_signing import (
    BadSignature,
    SignedParams,
    SigningKeys,
    check_signature,
    new_nonce,
    parse_signed,
    sign_query,
)

KEY = os.urandom(32)
KID = "acme.0123456789ab"

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
param_key = text.filter(lambda k: not k.startswith("sb_"))
requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
        "path": text.map(lambda t: "/" + t),
        "rest": st.lists(st.tuples(param_key, text), max_size=4).map(lambda pairs: tuple(sorted(pairs))),
        "expires": st.integers(0, 10**12 - 1),
        "nonce": st.from_regex(r"\A[A-Za-z0-9_-]{16,64}\Z"),
    }
)


def signed(request: dict[str, object]) -> SignedParams:
    query = sign_query(
        KEY, KID, request["method"], request["path"], request["rest"], request["expires"], request["nonce"]
    )  # type: ignore[arg-type]
    params = parse_signed(query)
    assert params is not None
    return params


@given(st.text(max_size=300))
def test_parser_accepts_or_refuses_cleanly(query: str) -> None:
    try:
        params = parse_signed(query)
    except BadSignature:
        return
    assert params is None or (params.tenant and params.expires >= 0)


@given(st.lists(st.tuples(st.sampled_from(["sb_kid", "sb_exp", "sb_nonce", "sb_sig", "sb_x", "a"]), text), max_size=8))
def test_parser_wants_exactly_one_of_each_signature_parameter(pairs: list[tuple[str, str]]) -> None:
    try:
        params = parse_signed(urlencode(pairs))
    except BadSignature:
        return
    names = [k for k, _ in pairs if k.startswith("sb_")]
    assert (params is None) == (not names)
    if params is not None:
        assert sorted(names) == ["sb_exp", "sb_kid", "sb_nonce", "sb_sig"]


@settings(max_examples=200)
@given(requests)
def test_round_trip_verifies(request: dict[str, object]) -> None:
    params = signed(request)
    assert (params.kid, params.expires, params.nonce, params.rest) == (
        KID,
        request["expires"],
        request["nonce"],
        request["rest"],
    )
    check_signature(KEY, request["method"], request["path"], params)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(requests, st.sampled_from(["method", "path", "rest", "expires", "nonce", "sig", "key"]), st.data())
def test_any_change_is_refused(request: dict[str, object], field: str, data: st.DataObject) -> None:
    params = signed(request)
    method, path, key = str(request["method"]), str(request["path"]), KEY
    if field == "method":
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]).filter(lambda m: m != method))
    elif field == "path":
        path = data.draw(text.map(lambda t: "/" + t).filter(lambda p: p != path))
    elif field == "rest":
        extra = data.draw(st.tuples(param_key, text))
        params = SignedParams(
            params.kid, params.expires, params.nonce, params.signature, tuple(sorted({*params.rest, extra}))
        )
        if params.rest == request["rest"]:
            return
    elif field == "expires":
        expires = data.draw(st.integers(0, 10**12 - 1).filter(lambda e: e != params.expires))
        params = SignedParams(params.kid, expires, params.nonce, params.signature, params.rest)
    elif field == "nonce":
        nonce = data.draw(st.from_regex(r"\A[A-Za-z0-9_-]{16,64}\Z").filter(lambda n: n != params.nonce))
        params = SignedParams(params.kid, params.expires, nonce, params.signature, params.rest)
    elif field == "sig":
        sig = data.draw(st.from_regex(r"\A[A-Za-z0-9_-]{43}\Z").filter(lambda s: s != params.signature))
        params = SignedParams(params.kid, params.expires, params.nonce, sig, params.rest)
    else:
        key = os.urandom(32)
    with pytest.raises(BadSignature):
        check_signature(key, method, path, params)


def test_nonces_are_fresh_and_well_formed() -> None:
    nonces = {new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    assert all(parse_signed(sign_query(KEY, KID, "GET", "/", (), 1, n)) for n in nonces)


async def test_signing_keys_rotate_with_a_grace_period(buckets: Buckets) -> None:
    master = MasterKeys.of(os.urandom(32))
    keys = SigningKeys(buckets.url_keys, master, grace_s=1.0)
    other_gateway = SigningKeys(buckets.url_keys, master, grace_s=1.0, cache_s=0.1)
    kid, key = await keys.current("acme")
    assert kid.startswith("acme.") and len(key) == 32
    assert await keys.current("acme") == (kid, key)
    assert await other_gateway.verification_key(kid) == key
    raw = (await buckets.url_keys.get("acme")).value
    assert raw is not None and key not in raw  # sealed at rest
    assert (await keys.current("beta"))[1] != key

    new_kid, until = await keys.rotate("acme")
    assert new_kid != kid and until is not None
    assert (await other_gateway.current("acme"))[0] in (kid, new_kid)  # its cache may lag briefly
    assert await other_gateway.verification_key(new_kid)  # a miss looks again at once
    assert await other_gateway.verification_key(kid) == key  # the old key verifies during the grace period
    await asyncio.sleep(1.2)
    with pytest.raises(BadSignature, match="grace"):
        await other_gateway.verification_key(kid)
    with pytest.raises(BadSignature, match="unknown"):
        await keys.verification_key("acme.ffffffffffff")
