"""envd's entry point: command line, routing, the listeners, child reaping and the ready marker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import traceback

from .auth import authorized
from .connect import Router
from .files import FilesEndpoint
from .filesystem_service import FilesystemService
from .http import HttpError, Request, Response, serve_connection
from .process_service import ProcessService
from .proxy import ENVD_PORT, forward
from .state import State

VERSION = "0.6.4"  # the envd release whose features this implements (the SDK gates on it)
MAX_INIT_BODY = 1024 * 1024


class App:
    """Routes one HTTP request to the right part of envd."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.router = Router()
        ProcessService(state).register(self.router)
        self.filesystem = FilesystemService(state)
        self.filesystem.register(self.router)
        self.files = FilesEndpoint(state)

    async def __call__(self, request: Request, response: Response) -> None:
        try:
            await self._dispatch(request, response)
        except HttpError:
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not response.started:
                response.close_connection = True
                await response.send_error(500, "internal error")

    async def _dispatch(self, request: Request, response: Response) -> None:
        port = request.headers.get("e2b-sandbox-port")
        if port and port.strip().isdigit() and int(port) != ENVD_PORT:
            await forward(request, response, int(port))
            return
        if request.path == "/health" and request.method in ("GET", "HEAD"):
            await response.send(204)
            return
        if not authorized(request, self.state.access_token):
            await response.send_error(401, "invalid or missing access token")
            return
        if await self.router.handle(request, response):
            return
        if request.path == "/files":
            await self.files.handle(request, response)
        elif request.path == "/init" and request.method == "POST":
            await self._init(request, response)
        elif request.path == "/envs" and request.method == "GET":
            await response.send_json(200, self.state.envs)
        elif request.path in ("/health", "/init", "/envs"):
            await response.send_error(405, "method not allowed")
        else:
            await response.send_error(404, f"no route for {request.path}")

    async def _init(self, request: Request, response: Response) -> None:
        """The control plane's first call: default env vars and, optionally, the access token."""
        try:
            body = json.loads(await request.read(MAX_INIT_BODY) or b"{}")
        except ValueError:
            await response.send_error(400, "malformed JSON body")
            return
        if not isinstance(body, dict):
            await response.send_error(400, "the body must be a JSON object")
            return
        env_vars = body.get("envVars") or {}
        if isinstance(env_vars, dict):
            self.state.envs.update({str(k): str(v) for k, v in env_vars.items()})
        token = body.get("accessToken")
        if isinstance(token, str) and token:
            self.state.access_token = token
        await response.send(204)


def _home(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
        return path
    except OSError:
        for fallback in (os.environ.get("HOME", ""), "/tmp", "/"):
            if fallback and os.path.isdir(fallback):
                return fallback
    return "/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="envd", description="SoulBox's E2B-compatible sandbox daemon")
    parser.add_argument("--socket", help="listen on this unix socket")
    parser.add_argument("--port", type=int, help=f"listen on this TCP port (default {ENVD_PORT} without --socket)")
    parser.add_argument("--host", default="0.0.0.0", help="TCP address to bind")
    parser.add_argument("--env-file", help="JSON object of default environment variables for processes")
    parser.add_argument("--user", default="user", help="default user for processes and files")
    parser.add_argument("--home", default="/home/user", help="default working directory")
    return parser.parse_args(argv)


def load_envs(path: str | None) -> dict[str, str]:
    """The --env-file: a JSON object of default environment variables."""
    if not path:
        return {}
    with open(path) as f:
        loaded = json.load(f)
    if not isinstance(loaded, dict):
        raise SystemExit(f"envd: {path} must hold a JSON object")
    return {str(k): str(v) for k, v in loaded.items()}


async def serve(args: argparse.Namespace, envs: dict[str, str]) -> None:
    """Listen, announce readiness, run until SIGTERM/SIGINT."""
    state = State(args.user, _home(args.home), os.environ.get("SOULBOX_ENVD_ACCESS_TOKEN") or None, envs)
    app = App(state)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, state.processes.reap)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await serve_connection(reader, writer, app)

    servers = []
    limit = 256 * 1024
    if args.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
        servers.append(await asyncio.start_unix_server(on_connection, args.socket, limit=limit))
    if args.port is not None or not args.socket:
        port = ENVD_PORT if args.port is None else args.port
        servers.append(await asyncio.start_server(on_connection, args.host, port, limit=limit, reuse_address=True))
    state.processes.reap()  # children that ended before the handler was installed
    sys.stdout.write("envd ready\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        state.processes.kill_all()
        for server in servers:
            server.close()
        app.filesystem.close()


def main(argv: list[str] | None = None) -> None:
    """Run envd."""
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, load_envs(args.env_file)))
