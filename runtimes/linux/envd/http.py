"""A small HTTP/1.1 server on asyncio streams: keep-alive, bounded heads, streamed bodies both ways.

Request bodies (Content-Length or chunked) are read in bounded chunks on demand; responses are
either fixed-length or chunked, and every write awaits `drain()` so a slow client applies
backpressure instead of growing our buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
READ_SIZE = 64 * 1024
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 * 1024 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


class HttpError(Exception):
    """A request the server refuses; answered with `status` and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyError(HttpError):
    """The request body is malformed or too large; the connection cannot be reused."""


async def read_chunked(reader: asyncio.StreamReader, limit: int | None = None) -> AsyncIterator[bytes]:
    """Decode a chunked transfer-coded body from `reader`, yielding pieces of at most READ_SIZE bytes."""
    total = 0
    while True:
        line = await _read_line(reader)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BodyError(400, "malformed chunk size") from None
        if size < 0:
            raise BodyError(400, "malformed chunk size")
        if size == 0:
            while await _read_line(reader):  # trailers until the empty line
                pass
            return
        total += size
        if limit is not None and total > limit:
            raise BodyError(413, "request body too large")
        while size:
            piece = await reader.read(min(size, READ_SIZE))
            if not piece:
                raise BodyError(400, "connection closed inside a chunk")
            size -= len(piece)
            yield piece
        if await _read_line(reader) != b"":
            raise BodyError(400, "chunk not followed by CRLF")


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise BodyError(400, "connection closed inside the body") from None
    except asyncio.LimitOverrunError:
        raise BodyError(400, "line too long") from None
    if len(line) > MAX_CHUNK_LINE:
        raise BodyError(400, "line too long")
    return line.rstrip(b"\r\n")


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked response body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Request:
    """One parsed request; its body is consumed through `stream()` or `read()`."""

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.reader = reader
        self.writer = writer
        parts = urllib.parse.urlsplit(target)
        self.path = urllib.parse.unquote(parts.path)
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items()}
        self.raw_query = parts.query
        self._consumed = False
        self._started = False
        self.hijacked = False
        te = headers.get("transfer-encoding", "").lower()
        if te and te != "chunked":
            raise HttpError(501, f"unsupported transfer-encoding {te!r}")
        self.chunked = te == "chunked"
        length = headers.get("content-length")
        if self.chunked:
            self.length: int | None = None
        elif length is None:
            self.length = 0
        else:
            if not length.isdigit():
                raise HttpError(400, "bad content-length")
            self.length = int(length)

    @property
    def body_done(self) -> bool:
        """Whether the body has been read to its end."""
        return self._consumed or (not self.chunked and self.length == 0)

    async def stream(self, limit: int | None = None) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive; `limit` bounds its total size (413 beyond)."""
        if self._started:
            raise RuntimeError("the body can be read once")
        self._started = True
        if self.headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self.writer.drain()
        if self.chunked:
            async for piece in read_chunked(self.reader, limit):
                yield piece
        else:
            remaining = self.length or 0
            if limit is not None and remaining > limit:
                raise BodyError(413, "request body too large")
            while remaining:
                piece = await self.reader.read(min(remaining, READ_SIZE))
                if not piece:
                    raise BodyError(400, "connection closed inside the body")
                remaining -= len(piece)
                yield piece
        self._consumed = True

    async def read(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes."""
        return b"".join([piece async for piece in self.stream(limit)])

    async def discard(self) -> None:
        """Skip what is left of the body so the connection can serve the next request."""
        if not self._started:
            async for _ in self.stream():
                pass

    async def until_disconnected(self) -> None:
        """Return once the client closed its side (call only after the body is read)."""
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return


class Response:
    """Writes one response: `start` then `write`s then `finish` (chunked unless a length is given)."""

    def __init__(self, writer: asyncio.StreamWriter, head_only: bool = False) -> None:
        self.writer = writer
        self.started = False
        self.finished = False
        self.chunked = False
        self.close_connection = False
        self.head_only = head_only
        self.status = 0

    async def start(self, status: int, headers: list[tuple[str, str]], length: int | None = None) -> None:
        """Send the status line and headers; `length=None` streams a chunked body."""
        self.started = True
        self.status = status
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if status in (204, 304) or (100 <= status < 200):
            pass
        elif length is None:
            self.chunked = True
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(f"Content-Length: {length}")
        if self.close_connection:
            lines.append("Connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def write(self, data: bytes) -> None:
        """Send a piece of the body and wait until the transport takes it."""
        if not data or self.head_only:
            return
        self.writer.write(encode_chunk(data) if self.chunked else data)
        await self.writer.drain()

    async def finish(self) -> None:
        """End the body."""
        if self.finished:
            return
        self.finished = True
        if self.chunked and not self.head_only:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A whole response at once."""
        all_headers = list(headers or [])
        if content_type:
            all_headers.append(("Content-Type", content_type))
        await self.start(status, all_headers, len(body))
        await self.write(body)
        await self.finish()

    async def send_json(self, status: int, value: object) -> None:
        """A JSON response."""
        await self.send(status, json.dumps(value).encode(), "application/json")

    async def send_error(self, status: int, message: str) -> None:
        """E2B's error body: `{"code": <status>, "message": ...}`."""
        await self.send_json(status, {"code": status, "message": message})


Handler = Callable[[Request, Response], Awaitable[None]]


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise HttpError(400, "connection closed inside the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large")
    return head


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(505 if version.startswith("HTTP/") else 400, "only HTTP/1.x is served")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, target, version, headers


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends for a moment: closing a socket with unread
    input makes the kernel send RST, which can destroy the response the client has not read yet."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
        deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
        discarded = 0
        while discarded < LINGER_BYTES:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            data = await asyncio.wait_for(reader.read(READ_SIZE), left)
            if not data:
                return
            discarded += len(data)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    """Serve requests on one connection until either side closes it."""
    try:
        while True:
            response = Response(writer)
            try:
                head = await _read_head(reader)
                if head is None:
                    return
                method, target, version, headers = _parse_head(head)
                request = Request(method, target, version, headers, reader, writer)
            except HttpError as e:
                response.close_connection = True
                await response.send_error(e.status, e.message)
                return
            response.head_only = method == "HEAD"
            conn = headers.get("connection", "").lower()
            if conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive"):
                response.close_connection = True
            try:
                await handler(request, response)
                if request.hijacked:
                    return
                if not request.body_done:
                    if request._started:
                        response.close_connection = True
                    else:
                        await request.discard()
            except HttpError as e:
                if response.started:
                    return
                if isinstance(e, BodyError):
                    response.close_connection = True
                await response.send_error(e.status, e.message)
            if not response.finished:
                return
            if response.close_connection:
                return
    except (ConnectionError, asyncio.IncompleteReadError, BodyError):
        return
    finally:
        await _linger(reader, writer)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
