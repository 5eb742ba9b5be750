"""The Connect protocol over our HTTP/1.1 server: unary, server- and client-streaming, JSON or binary proto.

Streams are enveloped: a 5-byte header (flags, big-endian length) before each message; the
last envelope (flag 0x02) carries `{}` or `{"error": {...}}`. Unary errors are a JSON body
`{"code": "not_found", "message": ...}` with the matching HTTP status. The e2b SDK speaks JSON; binary
messages are converted to the same JSON shape (protobin.py), so handlers see one form.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .http import BodyError, Request, Response
from .protobin import ProtoError, decode, encode

Message = dict[str, Any]
MAX_MESSAGE = 16 * 1024 * 1024
END_STREAM = 0x02
COMPRESSED = 0x01

# https://connectrpc.com/docs/protocol/#error-codes
HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class ConnectError(Exception):
    """An RPC failure with a Connect error code (`not_found`, `invalid_argument`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> Message:
        """The wire form of the error."""
        return {"code": self.code, "message": self.message}


@dataclass
class Call:
    """What a handler knows about its call besides the request message."""

    request: Request
    timeout: float | None = None
    keepalive: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


Unary = Callable[[Message, Call], Awaitable[Message]]
ServerStream = Callable[[Message, Call], AsyncIterator[Message]]
ClientStream = Callable[[AsyncIterator[Message], Call], Awaitable[Message]]


@dataclass
class Method:
    """One RPC: its kind decides how the body is framed."""

    kind: str  # "unary" | "server" | "client"
    fn: Any
    keepalive_message: Message | None = None
    input_type: str = ""  # the proto type names, set by Router.add
    output_type: str = ""


def envelope(payload: bytes, flags: int = 0) -> bytes:
    """Frame one message."""
    return struct.pack(">BI", flags, len(payload)) + payload


class EnvelopeReader:
    """Incremental envelope decoder fed with arbitrary byte pieces."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return the complete (flags, payload) envelopes now available."""
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 5:
            flags, length = struct.unpack_from(">BI", self._buf)
            if length > self._limit:
                raise ConnectError("resource_exhausted", "message too large")
            if len(self._buf) < 5 + length:
                break
            out.append((flags, bytes(self._buf[5 : 5 + length])))
            del self._buf[: 5 + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete envelope held back."""
        return len(self._buf)


def get_field(message: Message, name: str) -> object:
    """A field by its proto name or its JSON (lowerCamel) name."""
    if name in message:
        return message[name]
    head, *rest = name.split("_")
    return message.get(head + "".join(part.title() for part in rest))


def obj(message: Message, name: str) -> Message:
    """A message-typed field, `{}` when absent."""
    value = get_field(message, name)
    return value if isinstance(value, dict) else {}


def b64(value: object) -> bytes:
    """A bytes field (standard or URL-safe base64, padding optional)."""
    if not isinstance(value, str):
        return b""
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ConnectError("invalid_argument", "malformed base64 bytes field") from None


@dataclass(frozen=True)
class Codec:
    """How messages are serialized: "json" or "proto"."""

    name: str

    def decode(self, type_name: str, payload: bytes) -> Message:
        """A request message in its JSON shape."""
        if self.name == "proto":
            try:
                return decode(type_name, payload)
            except (ProtoError, UnicodeDecodeError) as e:
                raise ConnectError("invalid_argument", f"malformed protobuf message: {e}") from None
        try:
            value = json.loads(payload) if payload else {}
        except ValueError as e:
            raise ConnectError("invalid_argument", f"malformed JSON message: {e}") from None
        if not isinstance(value, dict):
            raise ConnectError("invalid_argument", "message is not a JSON object")
        return value

    def encode(self, type_name: str, message: Message) -> bytes:
        """A response message on the wire."""
        if self.name == "proto":
            return encode(type_name, message)
        return _encode(message)


CODECS = {"json": Codec("json"), "proto": Codec("proto")}


def _encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _gunzip(payload: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(payload, MAX_MESSAGE + 1)
    except zlib.error as e:
        raise ConnectError("invalid_argument", f"malformed gzip message: {e}") from None
    if len(data) > MAX_MESSAGE or inflater.unconsumed_tail:
        raise ConnectError("resource_exhausted", "message too large")
    return data


def _check_encoding(encoding: str) -> None:
    if encoding not in ("", "identity", "gzip"):
        raise ConnectError("unimplemented", f"unsupported compression {encoding!r}")


async def _messages(request: Request, codec: Codec, type_name: str) -> AsyncIterator[Message]:
    decoder = EnvelopeReader()
    encoding = request.headers.get("connect-content-encoding", "").lower()
    _check_encoding(encoding)
    async for piece in request.stream():
        for flags, payload in decoder.feed(piece):
            if flags & END_STREAM:
                return
            if flags & COMPRESSED:
                if encoding != "gzip":
                    raise ConnectError("invalid_argument", "a compressed message without connect-content-encoding")
                payload = _gunzip(payload)
            yield codec.decode(type_name, payload)
    if decoder.pending:
        raise ConnectError("invalid_argument", "truncated message envelope")


def _timeout(headers: dict[str, str]) -> float | None:
    value = headers.get("connect-timeout-ms")
    if value and value.isdigit():
        return int(value) / 1000
    return None


def _keepalive(headers: dict[str, str]) -> float | None:
    value = headers.get("keepalive-ping-interval")
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class Router:
    """Maps `/<service>/<Method>` paths to handlers."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, service: str, name: str, method: Method) -> None:
        """Register one method of a service (its messages are `<package>.<Name>Request`/`Response`)."""
        package = service.split(".")[0]
        method.input_type, method.output_type = f"{package}.{name}Request", f"{package}.{name}Response"
        self.methods[f"/{service}/{name}"] = method

    async def handle(self, request: Request, response: Response) -> bool:
        """Serve the request if it names a registered method; False if it does not."""
        method = self.methods.get(request.path)
        if method is None:
            return False
        call = Call(request, _timeout(request.headers), _keepalive(request.headers), request.headers)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method != "POST":
            await response.send(405, b"", headers=[("Allow", "POST")])
            return True
        prefix = "application/" if method.kind == "unary" else "application/connect+"
        codec = CODECS.get(content_type.removeprefix(prefix)) if content_type.startswith(prefix) else None
        if codec is None:
            accept = f"{prefix}json, {prefix}proto"
            await response.send(415, b"", headers=[("Accept-Post", accept)])
            return True
        if method.kind == "unary":
            await self._unary(method, codec, request, response, call)
        elif method.kind == "server":
            await self._server_stream(method, codec, request, response, call)
        else:
            await self._client_stream(method, codec, request, response, call)
        return True

    async def _unary(self, method: Method, codec: Codec, request: Request, response: Response, call: Call) -> None:
        try:
            encoding = request.headers.get("content-encoding", "").lower()
            _check_encoding(encoding)
            payload = await request.read(MAX_MESSAGE)
            message = codec.decode(method.input_type, _gunzip(payload) if encoding == "gzip" else payload)
            result = await _with_deadline(method.fn(message, call), call.timeout)
        except ConnectError as e:
            await response.send(HTTP_STATUS.get(e.code, 500), _encode(e.to_json()), "application/json")
            return
        await response.send(200, codec.encode(method.output_type, result), f"application/{codec.name}")

    async def _client_stream(
        self, method: Method, codec: Codec, request: Request, response: Response, call: Call
    ) -> None:
        # Nothing is sent before the request stream ended: a client that sees the response begin may stop
        # sending its body (the SDK's HTTP/1.1 client then ends it early).
        try:
            messages = _messages(request, codec, method.input_type)
            result = await _with_deadline(method.fn(messages, call), call.timeout)
            body = envelope(codec.encode(method.output_type, result)) + envelope(b"{}", END_STREAM)
        except ConnectError as e:
            body = envelope(_encode({"error": e.to_json()}), END_STREAM)
        await response.send(200, body, f"application/connect+{codec.name}")

    async def _server_stream(
        self, method: Method, codec: Codec, request: Request, response: Response, call: Call
    ) -> None:
        content_type = [("Content-Type", f"application/connect+{codec.name}")]
        try:
            first = [m async for m in _messages(request, codec, method.input_type)]
            if len(first) != 1:
                raise ConnectError("invalid_argument", "a server stream takes exactly one request message")
        except ConnectError as e:
            await response.start(200, content_type)
            await response.write(envelope(_encode({"error": e.to_json()}), END_STREAM))
            await response.finish()
            return
        except BodyError:
            raise
        await response.start(200, content_type)
        queue: asyncio.Queue[Message | ConnectError | None] = asyncio.Queue(maxsize=8)

        async def pump() -> None:
            try:
                async for item in method.fn(first[0], call):
                    await queue.put(item)
            except ConnectError as e:
                await queue.put(e)
                return
            except Exception as e:  # a handler bug must still end the stream properly
                await queue.put(ConnectError("internal", str(e)))
                return
            await queue.put(None)

        producer = asyncio.create_task(pump())
        closed = asyncio.create_task(request.until_disconnected())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout if call.timeout else None
        end: Message = {}
        try:
            while True:
                wait = call.keepalive
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        end = {"error": {"code": "deadline_exceeded", "message": "deadline exceeded"}}
                        break
                    wait = left if wait is None else min(wait, left)
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, closed}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    return
                if getter not in done:
                    getter.cancel()
                    if method.keepalive_message is not None and (deadline is None or loop.time() < deadline):
                        await response.write(envelope(codec.encode(method.output_type, method.keepalive_message)))
                    continue
                item = getter.result()
                if item is None:
                    break
                if isinstance(item, ConnectError):
                    end = {"error": item.to_json()}
                    break
                await response.write(envelope(codec.encode(method.output_type, item)))
            await response.write(envelope(_encode(end), END_STREAM))
            await response.finish()
        finally:
            producer.cancel()
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await closed
            if not response.finished:
                response.close_connection = True


async def _with_deadline(awaitable: Awaitable[Message], timeout: float | None) -> Message:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise ConnectError("deadline_exceeded", "deadline exceeded") from None
