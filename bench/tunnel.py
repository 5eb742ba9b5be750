"""The HTTP tunnel over core NATS next to bare nats-py request/reply, in one run.

Starts a private nats-server (free port, temp dir) and two connections (the
"gateway" and the "worker"), then measures:

* small requests: a 100-byte echo, sequential and with ``--concurrency`` in
  flight, through the tunnel (open + response) and as a bare request/reply;
* large bodies: ``--mb`` MB uploaded and downloaded through one tunnel stream,
  next to the same bytes as bare request/replies of one chunk each (the most
  a single core NATS round trip carries without flow control).

Run: ``.venv/bin/python bench/tunnel.py [--n 2000] [--mb 64] [--chunk-kb 64] [--window 16]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from soulbox.core.natsserver import NatsServer
from soulbox.core.tunnel import (
    TunnelClient,
    TunnelRequest,
    TunnelRequestHead,
    TunnelResponse,
    TunnelServer,
    TunnelSettings,
)

SUBJECT = "bench.tunnel"
BARE = "bench.bare"
SMALL = b"x" * 100
MB = 1024 * 1024


async def timed_rps(n: int, concurrency: int, call: Callable[[], Awaitable[None]]) -> float:
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def handler(request: TunnelRequest) -> TunnelResponse:
    if request.path == "/echo":
        return TunnelResponse(200, [], await request.body.read())
    if request.path == "/upload":
        total = 0
        async for chunk in request.body:
            total += len(chunk)
        return TunnelResponse(200, [], str(total).encode())
    size = int(request.query)
    return TunnelResponse(200, [], download(size, int(request.target["chunk"])))


async def download(size: int, chunk: int) -> AsyncIterator[bytes]:
    block = os.urandom(chunk)
    for _ in range(size // chunk):
        yield block


async def upload(size: int, chunk: int) -> AsyncIterator[bytes]:
    block = os.urandom(chunk)
    for _ in range(size // chunk):
        yield block


async def run(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    settings = TunnelSettings(chunk_bytes=args.chunk_kb * 1024, window=args.window)
    chunk = settings.chunk_bytes
    size = args.mb * MB
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "js")
        server.start()
        try:
            worker_nc: NATS = await nats.connect(server.url)
            gateway_nc: NATS = await nats.connect(server.url)

            async def bare_echo(msg: Msg) -> None:
                await msg.respond(msg.data)

            await worker_nc.subscribe(BARE, cb=bare_echo)
            await worker_nc.flush()
            rows: list[tuple[str, str, str]] = []
            async with (
                TunnelServer(worker_nc, SUBJECT, handler, settings=settings),
                TunnelClient(gateway_nc, settings=settings) as client,
            ):

                async def tunnel_echo() -> None:
                    stream = await client.open(SUBJECT, TunnelRequestHead(method="POST", path="/echo"), SMALL)
                    assert await stream.read() == SMALL

                async def bare_request() -> None:
                    reply = await gateway_nc.request(BARE, SMALL, timeout=5)
                    assert reply.data == SMALL

                for conc in (1, args.concurrency):
                    await timed_rps(200, conc, tunnel_echo)  # warm up
                    rps = await timed_rps(args.n, conc, tunnel_echo)
                    bare = await timed_rps(args.n, conc, bare_request)
                    rows.append((f"100 B echo, {conc} in flight", f"{rps:,.0f} req/s", f"{bare:,.0f} req/s"))

                started = time.perf_counter()
                stream = await client.open(
                    SUBJECT, TunnelRequestHead(method="PUT", path="/upload"), upload(size, chunk)
                )
                assert int(await stream.read()) == size
                up = size / MB / (time.perf_counter() - started)

                head = TunnelRequestHead(method="GET", path="/download", query=str(size), target={"chunk": str(chunk)})
                started = time.perf_counter()
                stream = await client.open(SUBJECT, head)
                received = 0
                async for piece in stream:
                    received += len(piece)
                assert received == size
                down = size / MB / (time.perf_counter() - started)

                block = os.urandom(chunk)
                started = time.perf_counter()
                for _ in range(size // chunk):
                    await gateway_nc.request(BARE, block, timeout=5)
                bare_mb = size / MB / (time.perf_counter() - started)
                label = f"{args.mb} MB in {args.chunk_kb} KiB chunks, window {args.window}"
                rows.append((f"upload {label}", f"{up:,.0f} MB/s", f"{bare_mb:,.0f} MB/s (echoed)"))
                rows.append((f"download {label}", f"{down:,.0f} MB/s", "(same)"))
            await worker_nc.close()
            await gateway_nc.close()
            return rows
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="small requests per row")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    rows = asyncio.run(run(parser.parse_args()))
    print("| case | tunnel | bare nats-py request/reply |")
    print("|---|---|---|")
    for case, tunnel, bare in rows:
        print(f"| {case} | {tunnel} | {bare} |")


if __name__ == "__main__":
    main()
