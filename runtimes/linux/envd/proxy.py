"""Port proxy: a request whose `E2b-Sandbox-Port` names another port goes to 127.0.0.1:<port> in the sandbox."""

from __future__ import annotations

import asyncio
import contextlib

from .http import Request, Response, encode_chunk

ENVD_PORT = 49983
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}
COPY_SIZE = 64 * 1024


async def forward(request: Request, response: Response, port: int) -> None:
    """Send the request upstream with `Connection: close`, splice the raw answer back, close the client."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        response.close_connection = True
        await response.send_json(502, {"code": 502, "message": f"port {port} is not open in the sandbox: {e.strerror}"})
        return
    request.hijacked = True
    try:
        lines = [f"{request.method} {request.target} HTTP/1.1"]
        for name, value in request.headers.items():
            if name not in HOP_BY_HOP:
                lines.append(f"{name}: {value}")
        lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async for piece in request.stream():
            writer.write(encode_chunk(piece) if request.chunked else piece)
            await writer.drain()
        if request.chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        while True:
            data = await reader.read(COPY_SIZE)
            if not data:
                break
            request.writer.write(data)
            await request.writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
