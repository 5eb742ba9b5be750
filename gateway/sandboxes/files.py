"""``/v1/sandboxes/{id}/files``: a sandbox's files on SoulBox's API (and so reachable by signed URLs).

``GET ?path=`` downloads, ``POST ?path=`` uploads (multipart or octet-stream),
as envd's own ``/files`` does: the request is checked against the caller's
tenant, then forwarded, streamed, to envd in the sandbox with the sandbox's
access token — which the caller never needs to hold.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from soulbox.core import names

from ..principal import principal
from ..proxy import forward
from .dataplane import ENVD_PORT

# The caller's credentials are SoulBox's, not the sandbox's: not passed on.
_DROPPED = frozenset({b"authorization", b"x-api-key", b"x-access-token", b"cookie"})


class SandboxFiles:
    """ASGI endpoint of the route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        sandbox_id: str = scope["path_params"]["sandbox_id"]
        platform = scope["app"].state.platform
        record = await platform.sandboxes.get(principal(request).tenant, sandbox_id)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _DROPPED]
        headers.append((b"x-access-token", record.access_token.encode()))
        inner = {
            **scope,
            "path": "/files",
            "raw_path": b"/files",
            "query_string": urlencode([(k, v) for k, v in query if not k.startswith("sb_")]).encode(),
            "headers": headers,
        }
        await forward(
            inner,
            receive,
            send,
            client=platform.tunnel,
            subject=names.worker_tunnel_subject(record.worker_id),
            target={"sandbox": sandbox_id, "port": str(ENVD_PORT)},
        )
