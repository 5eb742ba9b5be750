"""The host protocol between the Python host and one warm JS runtime process.

Transport: a unix socket per process. The host listens on a fresh path in a
private directory, starts ``bun|deno run shim.mjs <socket> <module> <mode>``,
accepts exactly one connection, then unlinks the path, so nothing else can
connect. The process's stdin/stdout/stderr are *not* the control channel:
they stay the function's own (script mode) or a log of stray writes (fetch
mode).

Frame (both directions), all integers unsigned 32-bit big-endian::

    +--------+----------+----------------------+------------------+
    | length | meta_len | meta: UTF-8 JSON obj | payload (binary) |
    +--------+----------+----------------------+------------------+
      length = 4 + meta_len + len(payload);  length <= MAX_FRAME

``meta["type"]`` names the message; the payload carries bytes that JSON
cannot (request or response body). Messages, in order:

host -> shim  ``init``    {env: {name: value}}                  once, first
shim -> host  ``ready``   {mode, runtime, version}             module loaded
host -> shim  ``run``     {}                 script: import the module now
host -> shim  ``invoke``  {id, method, url, headers: [[k, v]],
                           max_body, max_logs}   payload: request body
shim -> host  ``result``  {id, status, headers, body_bytes,
                           logs, logs_bytes}    payload: body, capped
shim -> host  ``error``   {id?, kind, message, stack?}
              kind: load | exception | unhandled_rejection |
              uncaught | bad_response

In script mode the process serves one invocation: after ``run`` the host
writes the input to the process's stdin and closes it; the script's
stdout/stderr are captured raw and its exit status is the result. An
``error`` frame before exit says why a non-zero exit happened. In fetch mode
the process serves invocations one at a time, for as long as the pool keeps
it; an ``error`` with kind ``unhandled_rejection`` or ``uncaught`` is
followed by the process exiting.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

from soulbox.core.errors import SchemaError

MAX_FRAME = 64 * 1024 * 1024 + 1024 * 1024  # a 64 MiB body plus room for meta
_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Frame:
    meta: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        return str(self.meta.get("type", ""))


def encode_frame(meta: dict[str, Any], payload: bytes = b"") -> bytes:
    encoded = json.dumps(meta, separators=(",", ":")).encode()
    length = 4 + len(encoded) + len(payload)
    if length > MAX_FRAME:
        raise SchemaError(f"frame of {length} bytes is over the {MAX_FRAME} byte limit")
    return _U32.pack(length) + _U32.pack(len(encoded)) + encoded + payload


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame; ``asyncio.IncompleteReadError`` means the peer went away."""
    (length,) = _U32.unpack(await reader.readexactly(4))
    if not 4 <= length <= MAX_FRAME:
        raise SchemaError(f"bad frame length {length}")
    data = await reader.readexactly(length)
    (meta_len,) = _U32.unpack_from(data)
    if meta_len > length - 4:
        raise SchemaError(f"bad meta length {meta_len} in a frame of {length}")
    try:
        meta = json.loads(data[4 : 4 + meta_len])
    except ValueError as exc:
        raise SchemaError(f"frame meta is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise SchemaError("frame meta is not a JSON object")
    return Frame(meta, bytes(data[4 + meta_len :]))
