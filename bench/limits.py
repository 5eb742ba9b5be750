"""What rate limits, quotas and the hardening middleware add to a request, in process.

Starts a nats-server and the gateway's lifespan (limits records, usage ledger,
shared rate limiter), then calls the middleware around a handler that answers
at once, straight through ASGI (no HTTP, no handler work), so the figures are
the middleware's own cost:

    handler alone | + Hardening | + LimitsGate, no limits set |
    + tenant and API-key rate limits (requests admitted; one shared-counter round trip per chunk) |
    + an invocation's quota check (invocations/day, GB-seconds/month)

Usage: .venv/bin/python bench/limits.py [-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.natsserver import NatsServer
from soulbox.core.settings import Settings
from soulbox.gateway.app import create_app
from soulbox.gateway.hardening import Hardening
from soulbox.gateway.limits import LimitsGate, LimitsService
from soulbox.gateway.principal import SCOPE_KEY, Principal


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


async def measure(app: ASGIApp, scope: Scope, n: int) -> list[float]:
    for _ in range(200):  # warm up
        await app(dict(scope), receive, send)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await app(dict(scope), receive, send)
        times.append((time.perf_counter() - started) * 1e6)
    return times


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "js")
        server.start()
        try:
            limits = {"window_s": 1.0, "chunk_fraction": 0.0005}  # chunk 50: like a limit of 1,000/s at 5 %
            settings = Settings(
                data_dir=Path(tmp) / "data",
                nats={"urls": [server.url]},  # type: ignore[arg-type]
                limits=limits,  # type: ignore[arg-type]
                _env_file=None,  # type: ignore[call-arg]
            )
            nc = await connect(settings, name="bench")
            await ensure_topology(nc.jetstream(), settings)
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                service: LimitsService = app.state.limits
                who = Principal(tenant="bench", subject="key", key_id="sb_bench")
                base: Scope = {
                    "type": "http",
                    "method": "GET",
                    "path": "/v1/functions",
                    "headers": [],
                    "app": app,
                    SCOPE_KEY: who,
                }
                invoke = {**base, "method": "POST", "path": "/v1/functions/f/invoke"}
                hardened = Hardening(answer, settings=settings.gateway)
                gated = Hardening(LimitsGate(answer), settings=settings.gateway)
                rows: list[tuple[str, list[float]]] = [
                    ("handler alone", await measure(answer, base, n)),
                    ("+ Hardening", await measure(hardened, base, n)),
                    ("+ LimitsGate, no limits", await measure(gated, base, n)),
                ]
                service.settings = service.settings.model_copy(
                    update={"requests_per_s": 100_000.0, "key_requests_per_s": 100_000.0}
                )
                claims = service.limiter.claims
                rows.append(("+ tenant and key rate limits", await measure(gated, base, n)))
                per_claim = (service.limiter.claims - claims) / (n + 200)
                service.settings = service.settings.model_copy(
                    update={"invocations_per_day": 10**9, "gb_seconds_per_month": 1e12}
                )
                rows.append(("+ rate limits + invocation quotas", await measure(gated, invoke, n)))
            await nc.close()
        finally:
            server.stop()
    alone = statistics.median(rows[0][1])
    print(f"{n} requests each; microseconds per request (added: over the handler alone, p50)")
    print("| stack | p50 µs | mean µs | p99 µs | added p50 µs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in rows:
        times.sort()
        p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
        print(f"| {name} | {p50:.1f} | {statistics.fmean(times):.1f} | {p99:.1f} | {p50 - alone:.1f} |")
    print(f"shared-counter round trips per request with rate limits: {per_claim:.3f} (2 scopes, chunk 50)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(run(args.n))


if __name__ == "__main__":
    main()
