"""A small HTTP/1.1 server on asyncio streams: keep-alive, Content-Length or chunked
request bodies, fixed-length responses and chunked streaming responses.

A handler gets a `Request` and returns a `Response` or a `StreamResponse`. While a stream
is written, `Request.gone` is set as soon as the client closes its connection, so the
producer can stop work nobody will read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT = 300.0


class HTTPError(Exception):
    """A request the server answers itself, with `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HTTPError(400, "bad_request", f"the body is not JSON: {exc}") from exc


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class StreamResponse:
    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "application/x-ndjson"


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


def json_response(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value).encode())


def error_response(status: int, code: str, message: str) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}})


class HTTPServer:
    """Serves `handler` on every connection accepted by `asyncio.start_server`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._accept, host, port, limit=MAX_HEADER_BYTES)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # The server is shutting down. Not re-raised: asyncio's start_server callback
            # would log a cancelled handler task as an error.
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
        except ValueError:
            await _write_response(writer, error_response(431, "headers_too_large", "request line too long"), False)
            return False
        if not line:
            return False
        try:
            request, keep_alive = await self._parse(line, reader)
        except HTTPError as exc:
            await _write_response(writer, error_response(exc.status, exc.code, exc.message), False)
            return False
        try:
            response = await self._handler(request)
        except HTTPError as exc:
            response = error_response(exc.status, exc.code, exc.message)
        except Exception as exc:  # the last resort: a JSON 500 instead of a dropped connection
            response = error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
        if isinstance(response, StreamResponse):
            return await self._stream(reader, writer, request, response, keep_alive)
        await _write_response(writer, response, keep_alive)
        return keep_alive

    async def _parse(self, line: bytes, reader: asyncio.StreamReader) -> tuple[Request, bool]:
        try:
            method, target, version = line.decode("latin-1").strip().split(" ", 2)
        except ValueError:
            raise HTTPError(400, "bad_request", "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise HTTPError(505, "http_version_not_supported", version)
        headers: dict[str, str] = {}
        size = 0
        while True:
            try:
                raw = await reader.readline()
            except ValueError:
                raise HTTPError(431, "headers_too_large", "header line too long") from None
            size += len(raw)
            if size > MAX_HEADER_BYTES:
                raise HTTPError(431, "headers_too_large", "headers too large")
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise HTTPError(400, "bad_request", "malformed header line")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        body = await _read_body(reader, headers)
        url = urlsplit(target)
        return Request(method.upper(), unquote(url.path), url.query, headers, body), keep_alive

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        response: StreamResponse,
        keep_alive: bool,
    ) -> bool:
        head = (
            f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            "Transfer-Encoding: chunked\r\n"
            "Cache-Control: no-cache\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        watcher = asyncio.create_task(_watch_eof(reader, writer, request.gone))
        try:
            writer.write(head.encode())
            await writer.drain()
            async for chunk in response.chunks:
                if not chunk or request.gone.is_set():
                    continue  # keep consuming: the producer finishes its cleanup
                try:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                except ConnectionError:
                    request.gone.set()
            if request.gone.is_set():
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return keep_alive
        except ConnectionError:
            request.gone.set()
            return False
        finally:
            watcher.cancel()


async def _watch_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gone: asyncio.Event) -> None:
    # Polled rather than read, so that nothing a client sends next is consumed here.
    while not (reader.at_eof() or writer.is_closing()):  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(0.1)
    gone.set()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError(400, "bad_request", "malformed chunk size") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise HTTPError(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length_text = headers.get("content-length")
    if length_text is None:
        return b""
    try:
        length = int(length_text)
    except ValueError:
        raise HTTPError(400, "bad_request", "malformed Content-Length") from None
    if length < 0 or length > MAX_BODY_BYTES:
        raise HTTPError(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    return await reader.readexactly(length)


async def _write_response(writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
    head = (
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    writer.write(head.encode() + response.body)
    await writer.drain()
