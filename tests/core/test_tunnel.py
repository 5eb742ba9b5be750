"""The HTTP tunnel over a real nats-server: client and server on separate connections."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from soulbox.core import names
from soulbox.core.bus import connect
from soulbox.core.codec import decode, encode
from soulbox.core.errors import (
    SchemaError,
    TunnelClosed,
    TunnelError,
    TunnelPeerLost,
    TunnelProtocolError,
    TunnelRemoteError,
    TunnelTimeout,
    TunnelUnreachable,
)
from soulbox.core.settings import Settings
from soulbox.core.tunnel import (
    Handler,
    TunnelClient,
    TunnelRequest,
    TunnelRequestHead,
    TunnelResponse,
    TunnelServer,
    TunnelSettings,
)
from soulbox.core.tunnelframes import TunnelFault, TunnelFrame, TunnelFrameKind, TunnelResponseHead

pytestmark = pytest.mark.timeout(60)

SUBJECT = names.worker_tunnel_subject("w1")
FAST = TunnelSettings(chunk_bytes=64 * 1024, window=8, ping_interval_s=0.2, idle_timeout_s=1.5, open_timeout_s=2.0)
MB = 1024 * 1024


def head(path: str = "/", method: str = "POST", **target: str) -> TunnelRequestHead:
    return TunnelRequestHead(method=method, path=path, headers=[("x-test", "1")], target=target)


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def echo(request: TunnelRequest) -> TunnelResponse:
    headers = [("x-method", request.method), ("x-path", request.path), ("x-target", request.target.get("sandbox", ""))]
    return TunnelResponse(200, headers, pieces(await request.body.read(), 50_000))


@pytest_asyncio.fixture
async def server_nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await connect(settings, name="tunnel-server")
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def client(nc: NATS) -> AsyncIterator[TunnelClient]:
    async with TunnelClient(nc, settings=FAST) as tunnel:
        yield tunnel


async def settled(server: TunnelServer) -> None:
    """Wait until the server has finished its streams (a loaded machine may lag a bit)."""
    for _ in range(200):
        if server.open_streams == 0:
            return
        await asyncio.sleep(0.01)


def serve(server_nc: NATS, handler: Handler, settings: TunnelSettings = FAST) -> TunnelServer:
    return TunnelServer(server_nc, SUBJECT, handler, settings=settings)


async def test_echo_small_and_streamed_bodies(client: TunnelClient, server_nc: NATS) -> None:
    async with serve(server_nc, echo) as server:
        stream = await client.open(SUBJECT, head("/a%20b", sandbox="sb1"), b"hello")
        assert stream.status == 200
        assert ("x-path", "/a%20b") in stream.headers and ("x-target", "sb1") in stream.headers
        assert await stream.read() == b"hello"

        body = os.urandom(300_000)
        stream = await client.open(SUBJECT, head(), pieces(body, 70_000))
        assert await stream.read() == body
        assert client.open_streams == 0
        await settled(server)
        assert server.open_streams == 0 and server.stats.completed == 2


async def test_30mb_upload_is_identical_and_bounded(client: TunnelClient, server_nc: NATS) -> None:
    body = os.urandom(30 * MB)
    seen: dict[str, int] = {}

    async def digest(request: TunnelRequest) -> TunnelResponse:
        h = hashlib.sha256()
        async for chunk in request.body:
            h.update(chunk)
        seen["max_buffered"] = request.body.max_buffered
        seen["max_buffered_bytes"] = request.body.max_buffered_bytes
        return TunnelResponse(200, body=h.hexdigest().encode())

    async with serve(server_nc, digest):
        stream = await client.open(SUBJECT, head(), pieces(body, MB))
        assert (await stream.read()).decode() == hashlib.sha256(body).hexdigest()
    assert 1 <= seen["max_buffered"] <= FAST.window
    assert seen["max_buffered_bytes"] <= FAST.window * FAST.chunk_bytes


async def test_30mb_download_is_identical_and_bounded(client: TunnelClient, server_nc: NATS) -> None:
    body = os.urandom(30 * MB)

    async def download(request: TunnelRequest) -> TunnelResponse:
        return TunnelResponse(200, [("content-length", str(len(body)))], pieces(body, 3 * MB))

    async with serve(server_nc, download):
        stream = await client.open(SUBJECT, head(method="GET"), b"")
        h = hashlib.sha256()
        async for chunk in stream:
            assert len(chunk) <= FAST.chunk_bytes
            h.update(chunk)
        assert h.hexdigest() == hashlib.sha256(body).hexdigest()
        assert 1 <= stream.body.max_buffered <= FAST.window
        assert stream.body.max_buffered_bytes <= FAST.window * FAST.chunk_bytes


async def test_slow_reader_makes_the_server_wait_for_credit(client: TunnelClient, server_nc: NATS) -> None:
    body = os.urandom(64 * 16 * 1024)  # 64 frames of 16 KiB

    async def fast_writer(request: TunnelRequest) -> TunnelResponse:
        return TunnelResponse(200, body=pieces(body, 16 * 1024))

    settings = FAST.model_copy(update={"chunk_bytes": 16 * 1024, "window": 4})
    async with TunnelClient(client._nc, settings=settings) as slow_client, serve(server_nc, fast_writer, settings) as s:
        stream = await slow_client.open(SUBJECT, head(method="GET"), b"")
        received = []
        async for chunk in stream:
            received.append(chunk)
            await asyncio.sleep(0.01)
        assert b"".join(received) == body
        assert stream.body.max_buffered <= settings.window
        await settled(s)
        assert s.stats.credit_waits > 0 and s.stats.protocol_errors == 0 and s.stats.completed == 1


async def test_long_stream_arrives_incrementally(client: TunnelClient, server_nc: NATS) -> None:
    async def ticker(request: TunnelRequest) -> TunnelResponse:
        async def ticks() -> AsyncIterator[bytes]:
            for i in range(10):
                yield f"tick {i}\n".encode()
                await asyncio.sleep(0.3)

        return TunnelResponse(200, [("content-type", "text/plain")], ticks())

    async with serve(server_nc, ticker):
        started = time.monotonic()
        stream = await client.open(SUBJECT, head(method="GET"), b"")
        arrivals = [(time.monotonic() - started, chunk) async for chunk in stream]
    assert [chunk for _, chunk in arrivals] == [f"tick {i}\n".encode() for i in range(10)]
    assert arrivals[0][0] < 0.5
    assert arrivals[-1][0] > 2.5  # each tick arrived when it was made, not all at the end
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.15


async def test_50_concurrent_streams(client: TunnelClient, server_nc: NATS) -> None:
    bodies = [os.urandom(1000 + i * 7919) for i in range(50)]
    async with serve(server_nc, echo) as server:

        async def one(i: int) -> bytes:
            stream = await client.open(SUBJECT, head(f"/{i}", sandbox=f"sb{i}"), pieces(bodies[i], 30_000))
            assert ("x-target", f"sb{i}") in stream.headers
            return await stream.read()

        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert results == bodies
        await settled(server)
        assert server.stats.completed == 50 and server.open_streams == 0


async def test_client_cancel_runs_the_handlers_finally(client: TunnelClient, server_nc: NATS) -> None:
    closed = asyncio.Event()

    async def forever(request: TunnelRequest) -> TunnelResponse:
        async def output() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 1000
                    await asyncio.sleep(0.01)
            finally:
                closed.set()

        return TunnelResponse(200, body=output())

    async with serve(server_nc, forever) as server:
        stream = await client.open(SUBJECT, head(method="GET"), b"")
        async for _ in stream:
            break
        await stream.aclose()
        await asyncio.wait_for(closed.wait(), 2)
        with pytest.raises(TunnelClosed):
            await stream.body.__anext__()
        await settled(server)
        assert server.open_streams == 0 and server.stats.cancelled == 1


async def test_cancel_while_the_handler_reads_the_upload(client: TunnelClient, server_nc: NATS) -> None:
    cancelled = asyncio.Event()

    async def reader(request: TunnelRequest) -> TunnelResponse:
        try:
            async for _ in request.body:
                pass
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return TunnelResponse(204)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 10_000
            await asyncio.sleep(0.01)

    async with serve(server_nc, reader):
        opening = asyncio.create_task(client.open(SUBJECT, head(), endless()))
        await asyncio.sleep(0.3)
        opening.cancel()  # the HTTP client went away before the response head
        with pytest.raises(asyncio.CancelledError):
            await opening
        await asyncio.wait_for(cancelled.wait(), 2)


async def test_handler_errors_become_error_frames(client: TunnelClient, server_nc: NATS) -> None:
    async def failing(request: TunnelRequest) -> TunnelResponse:
        if request.path == "/refused":
            raise ConnectionRefusedError(111, "connection refused")
        if request.path == "/ours":
            raise TunnelError("sandbox sb1 is paused", code="sandbox_paused")
        if request.path == "/midway":

            async def half() -> AsyncIterator[bytes]:
                yield b"partial"
                raise RuntimeError("daemon crashed")

            return TunnelResponse(200, body=half())
        raise KeyError("bug")

    async with serve(server_nc, failing) as server:
        for path, code in [
            ("/refused", "sandbox_unreachable"),
            ("/ours", "sandbox_paused"),
            ("/bug", "upstream_error"),
        ]:
            with pytest.raises(TunnelRemoteError) as info:
                await client.open(SUBJECT, head(path), b"")
            assert info.value.code == code
        stream = await client.open(SUBJECT, head("/midway"), b"")
        assert stream.status == 200
        with pytest.raises(TunnelRemoteError, match="daemon crashed"):
            await stream.read()
        assert server.stats.failed == 4


async def test_a_full_server_refuses_new_streams(client: TunnelClient, server_nc: NATS) -> None:
    release = asyncio.Event()

    async def held(request: TunnelRequest) -> TunnelResponse:
        async def body() -> AsyncIterator[bytes]:
            await release.wait()
            yield b"done"

        return TunnelResponse(200, body=body())

    async with serve(server_nc, held, FAST.model_copy(update={"max_streams": 2})) as server:
        streams = [await client.open(SUBJECT, head(), b"") for _ in range(2)]
        with pytest.raises(TunnelRemoteError) as info:
            await client.open(SUBJECT, head(), b"")
        assert info.value.code == "overloaded" and server.stats.refused == 1
        release.set()
        assert [await stream.read() for stream in streams] == [b"done", b"done"]


async def test_no_server_fails_fast(client: TunnelClient) -> None:
    started = time.monotonic()
    with pytest.raises(TunnelUnreachable) as info:
        await client.open(names.worker_tunnel_subject("nobody"), head(), b"x")
    assert time.monotonic() - started < 0.5
    assert info.value.code == "sandbox_unreachable"
    with pytest.raises(TunnelUnreachable):  # also with a streamed body
        await client.open(names.worker_tunnel_subject("nobody"), head(), pieces(b"x" * 200_000, 1000))
    assert client.open_streams == 0


async def test_a_slow_handler_is_accepted_before_it_answers(client: TunnelClient, server_nc: NATS) -> None:
    async def slow(request: TunnelRequest) -> TunnelResponse:
        await asyncio.sleep(0.6)
        return TunnelResponse(200, body=await request.body.read())

    async with serve(server_nc, slow):
        for body in (b"whole", pieces(b"streamed" * 10_000, 7000)):
            stream = await client.open(SUBJECT, head(), body, timeout=0.2)
            assert (await stream.read()).startswith((b"whole", b"streamed"))


async def test_a_silent_subscriber_times_out(client: TunnelClient, server_nc: NATS) -> None:
    await server_nc.subscribe(SUBJECT)  # listens, never answers
    await server_nc.flush()
    started = time.monotonic()
    with pytest.raises(TunnelTimeout):
        await client.open(SUBJECT, head(), b"x", timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert client.open_streams == 0


async def test_lost_frame_fails_the_stream(client: TunnelClient, server_nc: NATS, nc: NATS) -> None:
    release = asyncio.Event()

    async def slow(request: TunnelRequest) -> TunnelResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await release.wait()
            yield b"second"

        return TunnelResponse(200, body=body())

    async with serve(server_nc, slow):
        stream = await client.open(SUBJECT, head(method="GET"), b"")
        assert await stream.body.__anext__() == b"first"
        # A frame that skips a sequence number, as if one had been dropped on the way.
        forged = TunnelFrame(sid=stream.sid, kind=TunnelFrameKind.DATA, seq=99, data=b"bogus")
        await nc.publish(stream.link._reply, encode(forged))
        with pytest.raises(TunnelProtocolError, match="lost frame"):
            await stream.body.__anext__()
        release.set()


KILLABLE_SERVER = """
import asyncio, sys
import nats
from soulbox.core.tunnel import TunnelResponse, TunnelServer, TunnelSettings

async def handler(request):
    async def body():
        while True:
            yield b"z" * 1000
            await asyncio.sleep(0.05)
    return TunnelResponse(200, body=body())

async def main():
    nc = await nats.connect(sys.argv[1])
    settings = TunnelSettings(ping_interval_s=0.2, idle_timeout_s=1.5)
    async with TunnelServer(nc, sys.argv[2], handler, settings=settings):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_killed_server_is_detected_within_the_idle_timeout(client: TunnelClient, settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLABLE_SERVER, settings.nats.urls[0], SUBJECT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        stream = await client.open(SUBJECT, head(method="GET"), b"")
        received = 0
        killed_at = 0.0
        with pytest.raises(TunnelPeerLost):
            async for chunk in stream:
                received += len(chunk)
                if received >= 5000 and not killed_at:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
        assert killed_at and time.monotonic() - killed_at < FAST.idle_timeout_s
        assert client.open_streams == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_vanished_client_is_detected_by_the_server(settings: Settings, server_nc: NATS) -> None:
    closed = asyncio.Event()

    async def forever(request: TunnelRequest) -> TunnelResponse:
        async def output() -> AsyncIterator[bytes]:
            try:
                while True:
                    await asyncio.sleep(3600)
                    yield b""
            finally:
                closed.set()

        return TunnelResponse(200, body=output())

    async with serve(server_nc, forever) as server:
        gateway_nc = await connect(settings, name="doomed-gateway")
        doomed = TunnelClient(gateway_nc, settings=FAST)
        await doomed.start()
        await doomed.open(SUBJECT, head(method="GET"), b"")
        gone_at = time.monotonic()
        await gateway_nc.close()  # no cancel frame: the gateway's connection is simply gone
        await asyncio.wait_for(closed.wait(), FAST.idle_timeout_s + 1)
        assert time.monotonic() - gone_at <= FAST.idle_timeout_s + 1
        assert server.open_streams == 0
        await doomed.close()


async def test_a_restarted_server_fails_the_stream_at_the_next_ping(
    client: TunnelClient, server_nc: NATS, settings: Settings
) -> None:
    async def silent(request: TunnelRequest) -> TunnelResponse:
        async def body() -> AsyncIterator[bytes]:
            await asyncio.sleep(3600)
            yield b""

        return TunnelResponse(200, body=body())

    async with serve(server_nc, silent):
        stream = await client.open(SUBJECT, head(method="GET"), b"")
        # The worker came back under the same id: its new server has never heard of the stream.
        restarted_nc = await connect(settings, name="restarted-worker")
        try:
            async with serve(restarted_nc, silent):
                started = time.monotonic()
                with pytest.raises(TunnelPeerLost, match="lost the stream"):
                    await stream.read()
                assert time.monotonic() - started < FAST.idle_timeout_s
        finally:
            await restarted_nc.close()


async def test_server_close_fails_open_streams(client: TunnelClient, server_nc: NATS) -> None:
    async def forever(request: TunnelRequest) -> TunnelResponse:
        async def output() -> AsyncIterator[bytes]:
            while True:
                yield b"."
                await asyncio.sleep(0.01)

        return TunnelResponse(200, body=output())

    server = serve(server_nc, forever)
    await server.start()
    stream = await client.open(SUBJECT, head(method="GET"), b"")
    await server.close()
    with pytest.raises(TunnelRemoteError) as info:
        async for _ in stream:
            pass
    assert info.value.code == "tunnel_closed"


headers_st = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=5)
frames_st = st.builds(
    TunnelFrame,
    sid=st.text(min_size=1, max_size=32),
    kind=st.sampled_from(TunnelFrameKind),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    data=st.binary(max_size=2048),
    fin=st.booleans(),
    credit=st.integers(min_value=0, max_value=2**31),
    request=st.none()
    | st.builds(
        TunnelRequestHead,
        method=st.sampled_from(["GET", "POST", "PUT"]),
        path=st.text(max_size=50),
        query=st.text(max_size=50),
        headers=headers_st,
        target=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    ),
    response=st.none() | st.builds(TunnelResponseHead, status=st.integers(100, 999), headers=headers_st),
    fault=st.none() | st.builds(TunnelFault, code=st.text(max_size=20), message=st.text(max_size=80)),
)


@given(frames_st)
def test_frames_round_trip(frame: TunnelFrame) -> None:
    assert decode(TunnelFrame, encode(frame)) == frame


@given(st.binary(max_size=200))
def test_garbage_is_a_schema_error_or_a_frame(data: bytes) -> None:
    try:
        frame = decode(TunnelFrame, data)
    except SchemaError:
        return
    assert isinstance(frame, TunnelFrame)
