"""PTY terminals over WebSocket: ``GET /v1/sandboxes/{sandbox_id}/pty`` (the native API's terminal).

A browser terminal (xterm.js and the like) speaks WebSocket; envd speaks
Connect. The gateway bridges them: it starts a login shell on a PTY with
envd's ``process.Process/Start`` (a server stream through the tunnel, output
arriving as it is written) and turns what the client sends into envd calls.

Client -> server: binary frames are keystrokes; text frames are JSON
``{"type": "resize", "cols": C, "rows": R}``. Server -> client: binary frames
are terminal output; a last text frame ``{"type": "exit", "exit_code": N}``
when the shell ends. Query: ``cols``, ``rows`` (default 80x24), ``cmd``
(default ``/bin/bash``). Authenticated like the rest of the API, before the
upgrade, by the gate (:mod:`soulbox.gateway.auth`: ``X-API-KEY``, a Bearer
token, or ``?api_key=`` where a browser cannot set headers). When the client goes
away, the shell is killed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from soulbox.core import names
from soulbox.core.errors import InvalidRequest, SoulboxError
from soulbox.core.sandboxes import SandboxRecord
from soulbox.core.tunnel import TunnelClient, TunnelStream
from soulbox.core.tunnelframes import TunnelRequestHead
from soulbox.runtimes.linux.envd.connect import END_STREAM, EnvelopeReader, envelope

from ..errors import status_of
from ..platform import Platform
from ..principal import principal

ENVD_PORT = "49983"
KEEPALIVE_S = "30"
MAX_SIZE = 1000


class EnvdCalls:
    """envd's process RPCs for one sandbox, through the tunnel."""

    def __init__(self, client: TunnelClient, record: SandboxRecord) -> None:
        self._client = client
        self._subject = names.worker_tunnel_subject(record.worker_id)
        self._target = {"sandbox": record.sandbox_id, "port": ENVD_PORT}
        self._token = record.access_token

    def _head(self, method: str, content_type: str) -> TunnelRequestHead:
        headers = [
            ("content-type", content_type),
            ("connect-protocol-version", "1"),
            ("x-access-token", self._token),
            ("keepalive-ping-interval", KEEPALIVE_S),
        ]
        return TunnelRequestHead(method="POST", path=f"/process.Process/{method}", headers=headers, target=self._target)

    async def unary(self, method: str, message: dict[str, Any]) -> dict[str, Any]:
        stream = await self._client.open(
            self._subject, self._head(method, "application/json"), json.dumps(message).encode()
        )
        async with stream:
            body = await stream.read()
        if stream.status != 200:
            raise SoulboxError(f"envd {method} failed: {stream.status} {body[:200]!r}", code="sandbox_error")
        answer: dict[str, Any] = json.loads(body or b"{}")
        return answer

    async def start_pty(self, cmd: str, cols: int, rows: int) -> TunnelStream:
        request = {
            "process": {"cmd": cmd, "args": ["-i", "-l"], "envs": {"TERM": "xterm-256color", "LANG": "C.UTF-8"}},
            "pty": {"size": {"cols": cols, "rows": rows}},
        }
        body = envelope(json.dumps(request).encode())
        return await self._client.open(self._subject, self._head("Start", "application/connect+json"), body)


def _size(websocket: WebSocket, name: str, default: int) -> int:
    raw = websocket.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= MAX_SIZE:
        raise InvalidRequest(f"{name} must be an integer from 1 to {MAX_SIZE}")
    return int(raw)


async def terminal(websocket: WebSocket) -> None:
    platform: Platform = websocket.app.state.platform
    try:
        record = await platform.sandboxes.get(principal(websocket).tenant, websocket.path_params["sandbox_id"])
        cols, rows = _size(websocket, "cols", 80), _size(websocket, "rows", 24)
    except SoulboxError as exc:
        await websocket.close(code=4000 + status_of(exc), reason=f"{exc.code}: {exc.message}"[:120])
        return
    await websocket.accept()
    calls = EnvdCalls(platform.tunnel, record)
    stream = await calls.start_pty(websocket.query_params.get("cmd") or "/bin/bash", cols, rows)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    output = asyncio.create_task(_output(stream, websocket, started))
    pid: int | None = None
    try:
        pid = await asyncio.wait_for(asyncio.shield(started), 10)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes"):
                data = base64.b64encode(message["bytes"]).decode()
                await calls.unary("SendInput", {"process": {"pid": pid}, "input": {"pty": data}})
            elif message.get("text"):
                await _control(calls, pid, message["text"])
    except (WebSocketDisconnect, TimeoutError):
        pass
    finally:
        if pid is not None and not output.done():
            with contextlib.suppress(SoulboxError):
                await calls.unary("SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        output.cancel()
        with contextlib.suppress(asyncio.CancelledError, SoulboxError):
            await output
        await stream.aclose()


async def _control(calls: EnvdCalls, pid: int, text: str) -> None:
    try:
        message = json.loads(text)
        if message.get("type") != "resize":
            return
        size = {"cols": int(message["cols"]), "rows": int(message["rows"])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # not a control message we know: ignored, like a terminal ignores junk
    await calls.unary("Update", {"process": {"pid": pid}, "pty": {"size": size}})


async def _output(stream: TunnelStream, websocket: WebSocket, started: asyncio.Future[int]) -> None:
    """envd's events -> WebSocket frames, until the shell's end (then the socket is closed)."""
    reader = EnvelopeReader()
    exit_code: int | None = None
    async for chunk in stream:
        for flags, payload in reader.feed(chunk):
            message = json.loads(payload or b"{}")
            if flags & END_STREAM:
                continue
            event = message.get("event", {})
            if "start" in event and not started.done():
                started.set_result(int(event["start"]["pid"]))
            elif "data" in event and "pty" in event["data"]:
                await websocket.send_bytes(base64.b64decode(event["data"]["pty"]))
            elif "end" in event:
                exit_code = event["end"].get("exitCode", 0)
    if not started.done():
        started.set_exception(SoulboxError("the terminal did not start", code="sandbox_error"))
        return
    with contextlib.suppress(RuntimeError):  # the client is gone already
        await websocket.send_text(json.dumps({"type": "exit", "exit_code": exit_code}))
        await websocket.close()
