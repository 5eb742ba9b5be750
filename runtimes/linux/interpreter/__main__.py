"""The server's command line.

In a sandbox, with this folder bind-mounted read-only at /opt/soulbox/interpreter:

    PYTHONPATH=/opt/soulbox /usr/bin/python3 -m interpreter --port 49999 \
        --python <env>/bin/python --node /usr/bin/node --cwd /home/user

On the host: `python -m soulbox.runtimes.linux.interpreter` with the same options.
It prints `interpreter ready` on stdout once it listens, and stops on SIGTERM/SIGINT,
killing its kernels.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys

from .app import App
from .contexts import Config, Contexts
from .httpserver import HTTPServer

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="interpreter", description="E2B-compatible code-interpreter server")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=49999)
    parser.add_argument("--python", default=sys.executable, help="Python of the Python kernels")
    parser.add_argument("--node", default=None, help="node of the JavaScript kernels (default: node on PATH)")
    parser.add_argument("--cwd", default="/home/user", help="working directory of contexts created without one")
    parser.add_argument("--max-output-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--interrupt-grace", type=float, default=3.0)
    return parser.parse_args(argv)


def _cwd(wanted: str) -> str:
    for candidate in (wanted, os.path.expanduser("~"), os.getcwd(), "/"):
        if os.path.isdir(candidate):
            return candidate
    return "/"


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, then kill every kernel."""
    config = Config(
        python=args.python,
        node=args.node or shutil.which("node") or "node",
        cwd=_cwd(args.cwd),
        package_dir=PACKAGE_DIR,
        max_output_bytes=args.max_output_bytes,
        interrupt_grace=args.interrupt_grace,
    )
    contexts = Contexts(config)
    server = await HTTPServer(App(contexts)).serve(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("interpreter ready", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await contexts.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(_parse(argv)))


if __name__ == "__main__":
    main()
