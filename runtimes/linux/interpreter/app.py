"""The E2B code-interpreter HTTP API over `Contexts` (languages: python, javascript, bash).

    GET    /health                  "OK"
    POST   /execute                 NDJSON stream of an execution, `end_of_execution` last
    POST   /contexts                {"language"?, "cwd"?} → {"id", "language", "cwd"}
    GET    /contexts                [{"id", "language", "cwd"}, ...]
    POST   /contexts/{id}/restart   null
    DELETE /contexts/{id}           null

`/execute` takes {"code", "context_id"?, "language"?, "env_vars"?} like E2B's server, plus
an optional "timeout" in seconds (the SDK's own timeout is client-side: it closes the
connection, which interrupts the execution here too). Errors are
`{"error": {"code", "message"}}` with a 4xx/5xx status, which the SDK turns into
NotFoundException (404) or SandboxException (the rest).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from .contexts import Context, Contexts
from .errors import BadRequest, InterpreterError
from .httpserver import Request, Response, StreamResponse, error_response, json_response


class App:
    """Routes requests to the contexts."""

    def __init__(self, contexts: Contexts) -> None:
        self._contexts = contexts

    async def __call__(self, request: Request) -> Response | StreamResponse:
        try:
            return await self._route(request)
        except InterpreterError as exc:
            return error_response(exc.status, exc.code, str(exc))

    async def _route(self, request: Request) -> Response | StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        if parts == ["health"] and method == "GET":
            return json_response(200, "OK")
        if parts == ["execute"] and method == "POST":
            return await self._execute(request)
        if parts == ["contexts"]:
            if method == "POST":
                body = _object(request.json() or {})
                context = await self._contexts.create(_optional_str(body, "language"), _optional_str(body, "cwd"))
                return json_response(200, context.to_json())
            if method == "GET":
                return json_response(200, [c.to_json() for c in self._contexts.list()])
            return _not_allowed(method)
        if len(parts) == 3 and parts[0] == "contexts" and parts[2] == "restart":
            if method != "POST":
                return _not_allowed(method)
            await self._contexts.get(parts[1]).restart()
            return json_response(200, None)
        if len(parts) == 2 and parts[0] == "contexts":
            if method != "DELETE":
                return _not_allowed(method)
            await self._contexts.remove(parts[1])
            return json_response(200, None)
        return error_response(404, "not_found", f"no route for {method} {request.path}")

    async def _execute(self, request: Request) -> StreamResponse:
        body = _object(request.json())
        code = body.get("code")
        if not isinstance(code, str):
            raise BadRequest('"code" must be a string')
        context_id = _optional_str(body, "context_id")
        language = _optional_str(body, "language")
        if context_id and language:
            raise BadRequest("Only one of context_id or language can be provided")
        env = body.get("env_vars") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
            raise BadRequest('"env_vars" must be an object of strings')
        timeout = body.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise BadRequest('"timeout" must be a positive number of seconds')
        if context_id:
            context = self._contexts.get(context_id)
        else:
            context = await self._contexts.default(language)
        context.admit()
        env_vars = {k: str(v) for k, v in env.items()}
        return StreamResponse(200, _stream(context, code, env_vars, timeout, request.gone))


async def _stream(
    context: Context, code: str, env: dict[str, str], timeout: float | None, gone: asyncio.Event
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def run() -> None:
        try:
            await context.execute(code, env, emit=queue.put_nowait, timeout=timeout, gone=gone)
        except Exception as exc:  # the stream has begun: report in it rather than cut it
            queue.put_nowait({"type": "error", "name": "InternalError", "value": repr(exc), "traceback": ""})
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        while (msg := await queue.get()) is not None:
            yield (json.dumps(msg) + "\n").encode()
        yield b'{"type": "end_of_execution"}\n'
    finally:
        if not task.done():
            gone.set()
            await asyncio.shield(task)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f'"{key}" must be a string')
    return value


def _not_allowed(method: str) -> Response:
    return error_response(405, "method_not_allowed", f"{method} is not allowed here")
