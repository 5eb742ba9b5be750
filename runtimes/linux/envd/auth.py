"""Access control: the `X-Access-Token` header, or a signed `/files` URL as the e2b SDK computes it."""

from __future__ import annotations

import base64
import time

# hmac.compare_digest's own constant-time fallback: hmac would load OpenSSL (~0.7 MB idle, ~4 ms at the
# first request after a hand-out) for the very same comparison.
from _operator import _compare_digest as compare_digest

from .http import Request


def file_signature(path: str, operation: str, user: str, token: str, expiration: int | None) -> str:
    """`v1_` + unpadded base64 of sha256("path:operation:user:token[:expiration]") (e2b/sandbox/signature.py)."""
    import hashlib  # on first use: OpenSSL's libcrypto is not loaded into an idle sandbox

    raw = f"{path}:{operation}:{user}:{token}" + (f":{expiration}" if expiration is not None else "")
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def authorized(request: Request, token: str | None) -> bool:
    """Whether the request may proceed."""
    if token is None:
        return True
    given = request.headers.get("x-access-token")
    if given is not None and compare_digest(given.encode(), token.encode()):
        return True
    if request.path != "/files" or "signature" not in request.query:
        return False
    expiration_text = request.query.get("signature_expiration")
    expiration = None
    if expiration_text:
        if not expiration_text.isdigit() or int(expiration_text) < time.time():
            return False
        expiration = int(expiration_text)
    operation = "read" if request.method in ("GET", "HEAD") else "write"
    expected = file_signature(
        request.query.get("path", ""), operation, request.query.get("username", ""), token, expiration
    )
    return compare_digest(request.query["signature"].encode(), expected.encode())
