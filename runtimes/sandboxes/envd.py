"""The worker's HTTP client to one sandbox's envd, over the unix socket in the sandbox's run directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx

from soulbox.core.errors import SoulboxError

CONNECT_TIMEOUT_S = 5.0


class EnvdError(SoulboxError):
    code = "sandbox_unreachable"


class EnvdClient:
    """Requests to envd; responses are streamed (process output can flow for hours)."""

    def __init__(self, socket: Path) -> None:
        # One connection per request (a unix connect costs microseconds): a request cut short
        # mid-body can never leave bytes behind for the next one on a kept-alive connection.
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket), limits=httpx.Limits(max_keepalive_connections=0)),
            base_url="http://envd",
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
        )

    async def init(self, env_vars: dict[str, str], access_token: str) -> None:
        """Hand the sandbox to its user: their env vars and the access token envd demands from now on."""
        try:
            response = await self._http.post("/init", json={"envVars": env_vars, "accessToken": access_token})
        except httpx.HTTPError as exc:
            raise EnvdError(f"envd did not answer /init: {exc}") from exc
        if response.status_code >= 300:
            raise EnvdError(f"envd refused /init: {response.status_code} {response.text[:200]}")

    async def send(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterator[bytes] | bytes,
    ) -> httpx.Response:
        """Forward one request; the caller reads ``aiter_raw()`` and must ``aclose()`` the response."""
        url = httpx.URL(path=path, query=query.encode())
        request = self._http.build_request(method, url, headers=list(headers), content=body)
        try:
            return await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise EnvdError(f"the sandbox's daemon is unreachable: {exc}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()
