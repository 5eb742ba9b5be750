"""HTTP-like envelopes: how a fetch handler's request and response ride in bytes.

An invocation's ``input`` is an encoded :class:`HttpRequest` (msgpack map
with ``kind: "http.request"``); any other input is taken as the body of a
``POST /``. A fetch handler's result is an encoded :class:`HttpResponse` in
``RunResult.stdout`` (the body is what ``max_output_bytes`` caps; the
envelope stays decodable), and its console output is ``stderr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from soulbox.core.errors import SchemaError

DEFAULT_URL = "http://localhost/"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str = "POST"
    url: str = DEFAULT_URL
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def encode(self) -> bytes:
        doc = {
            "v": 1,
            "kind": "http.request",
            "method": self.method,
            "url": self.url,
            "headers": [list(h) for h in self.headers],
            "body": self.body,
        }
        return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, data: bytes) -> HttpRequest:
        """The request in ``data``, or a ``POST /`` carrying ``data`` as its body."""
        doc = _unpack(data)
        if doc is None or doc.get("kind") != "http.request":
            return cls(body=data)
        try:
            return cls(
                method=str(doc.get("method", "GET")).upper(),
                url=str(doc.get("url", DEFAULT_URL)),
                headers=tuple((str(k), str(v)) for k, v in doc.get("headers", ())),
                body=bytes(doc.get("body", b"")),
            )
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"bad http.request envelope: {exc}") from exc


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def encode(self) -> bytes:
        doc = {
            "v": 1,
            "kind": "http.response",
            "status": self.status,
            "headers": [list(h) for h in self.headers],
            "body": self.body,
        }
        return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, data: bytes) -> HttpResponse:
        doc = _unpack(data)
        if doc is None or doc.get("kind") != "http.response":
            raise SchemaError("not an http.response envelope")
        return cls(
            status=int(doc["status"]),
            headers=tuple((str(k), str(v)) for k, v in doc.get("headers", ())),
            body=bytes(doc.get("body", b"")),
        )


def _unpack(data: bytes) -> dict[str, Any] | None:
    first = data[0] if data else -1
    if not (0x80 <= first <= 0x8F or first in (0xDE, 0xDF)):
        return None  # not a msgpack map: the fast path for raw bodies
    try:
        doc = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    return doc if isinstance(doc, dict) else None
