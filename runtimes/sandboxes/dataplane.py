"""The worker's end of the sandbox data plane: tunnelled HTTP requests, forwarded to envd.

The gateway opens a tunnel stream to this worker with the sandbox id and port
as its target; the request goes to the sandbox's envd on its unix socket,
with ``E2b-Sandbox-Port`` naming the port (envd serves its own, 49983, and
forwards any other to that port on the sandbox's loopback). The response
streams back as envd sends it. A sandbox that is not here, or paused, answers
502 like E2B's edge does (the SDK reads 502 as "not running").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import SandboxState
from soulbox.core.tunnel import TunnelRequest, TunnelResponse

from .envd import EnvdError
from .host import SandboxHost

log = get_logger(__name__)

ENVD_PORT = 49983
PORT_HEADER = "e2b-sandbox-port"
_DROPPED = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", PORT_HEADER})


def _unavailable(message: str) -> TunnelResponse:
    body = json.dumps({"code": 502, "message": message, "error_code": "sandbox_unavailable"}).encode()
    return TunnelResponse(502, [("content-type", "application/json")], body)


class SandboxDataPlane:
    def __init__(self, host: SandboxHost) -> None:
        self._host = host

    async def handle(self, request: TunnelRequest) -> TunnelResponse:
        sandbox_id = request.target.get("sandbox", "")
        port = request.target.get("port") or str(ENVD_PORT)
        hosted = self._host.get(sandbox_id)
        if hosted is None or not hosted.box.alive:
            return _unavailable(f"sandbox {sandbox_id!r} is not running")
        if hosted.record.state == SandboxState.PAUSED:
            return _unavailable(f"sandbox {sandbox_id!r} is paused; resume it first")
        headers = [(k, v) for k, v in request.headers if k.lower() not in _DROPPED]
        headers.append(("E2b-Sandbox-Port", port))
        try:
            response = await hosted.envd.send(request.method, request.path, request.query, headers, request.body)
        except EnvdError as exc:
            return _unavailable(exc.message)
        out = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROPPED]
        return TunnelResponse(response.status_code, out, _relay(response))


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it comes; closing the generator (a cancelled stream) closes the upstream."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()
