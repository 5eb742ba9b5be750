"""The host protocol's frames and the HTTP envelopes, without a runtime."""

from __future__ import annotations

import asyncio
import struct

import msgpack
import pytest

from soulbox.core.errors import SchemaError
from soulbox.runtimes.js.http import HttpRequest, HttpResponse
from soulbox.runtimes.js.wire import MAX_FRAME, encode_frame, read_frame


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_frames_round_trip_meta_and_binary_payload() -> None:
    payload = bytes(range(256)) * 10
    data = encode_frame({"type": "invoke", "id": 7}, payload) + encode_frame({"type": "ready"})
    reader = _reader(data)
    first, second = await read_frame(reader), await read_frame(reader)
    assert (first.type, first.meta["id"], first.payload) == ("invoke", 7, payload)
    assert (second.type, second.payload) == ("ready", b"")
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", MAX_FRAME + 1),
        struct.pack(">II", 8, 100) + b"\0" * 4,
        struct.pack(">II", 7, 3) + b"[1]",
        struct.pack(">II", 7, 3) + b"{{{",
    ],
)
async def test_malformed_frames_are_schema_errors(data: bytes) -> None:
    with pytest.raises(SchemaError):
        await read_frame(_reader(data))


def test_http_envelopes() -> None:
    request = HttpRequest("GET", "http://fn/a?b=1", (("x-k", "v"),), b"")
    assert HttpRequest.decode(request.encode()) == request
    assert HttpRequest.decode(b"plain bytes") == HttpRequest(body=b"plain bytes")
    other_map = msgpack.packb({"kind": "something else"})
    assert HttpRequest.decode(other_map) == HttpRequest(body=other_map)
    response = HttpResponse(404, (("content-type", "text/plain"),), b"missing")
    assert HttpResponse.decode(response.encode()) == response
    with pytest.raises(SchemaError):
        HttpResponse.decode(b"not an envelope")
