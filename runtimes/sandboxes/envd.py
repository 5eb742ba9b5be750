"""The worker's HTTP client to one sandbox's envd, over the unix socket in the sandbox's run directory."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx

from soulbox.core.errors import SoulboxError

CONNECT_TIMEOUT_S = 5.0
# Never used (plain HTTP on a unix socket), but httpx builds one per client unless given one, and
# loading the CA bundle into a fresh context cost ~30 ms of every sandbox hand-out.
_UNUSED_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class EnvdError(SoulboxError):
    code = "sandbox_unreachable"


class EnvdClient:
    """Requests to envd; responses are streamed (process output can flow for hours)."""

    def __init__(self, socket: Path) -> None:
        # One connection per request (a unix connect costs microseconds): a request cut short
        # mid-body can never leave bytes behind for the next one on a kept-alive connection.
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(
                uds=str(socket), verify=_UNUSED_TLS, limits=httpx.Limits(max_keepalive_connections=0)
            ),
            base_url="http://envd",
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            trust_env=False,  # proxies from the environment would mean more clients (and contexts) per sandbox
        )
        self.access_token: str | None = None

    async def init(self, env_vars: dict[str, str], access_token: str) -> None:
        """Set default env vars and the access token envd demands from now on (the current one authorizes)."""
        headers = {"X-Access-Token": self.access_token} if self.access_token else {}
        body = {"envVars": env_vars, "accessToken": access_token}
        try:
            response = await self._http.post("/init", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise EnvdError(f"envd did not answer /init: {exc}") from exc
        if response.status_code >= 300:
            raise EnvdError(f"envd refused /init: {response.status_code} {response.text[:200]}")
        self.access_token = access_token

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
