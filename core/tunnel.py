"""A streaming HTTP tunnel over core NATS: the gateway's only path to a sandbox's worker.

A ``TunnelClient`` (gateway) opens a stream to a ``TunnelServer`` (worker) on
the worker's subject (``names.worker_tunnel_subject``); the request body
streams up and the response streams down as msgpack ``TunnelFrame``s, under
credit windows in both directions (core NATS drops what a slow subscriber
cannot take, so nothing is ever sent without credit), with per-direction
sequence numbers (a lost frame fails the stream, it never shortens a body),
pings while idle and an idle timeout (a killed worker or gateway is noticed
and the other side cleans up), and cancellation in both directions.

    client = TunnelClient(nc, settings=TunnelSettings())
    await client.start()
    stream = await client.open(subject, TunnelRequestHead(method="GET", path="/x"), body)
    stream.status, stream.headers
    async for chunk in stream: ...
    await stream.aclose()

    async def handler(request: TunnelRequest) -> TunnelResponse: ...
    async with TunnelServer(nc, subject, handler): ...

The protocol (``schemas.TunnelFrame``; ``seq`` counts each direction's frames from 0):

    client -> server subject          server -> <client inbox>.<sid>
    open(head, credit=W[, data, fin])
                                      credit(W)   the accept (for a whole small request:
                                                  the head within 20 ms accepts instead)
    data ... end  (each data frame spends one credit the server granted)
                                      head(status, headers[, data, fin])
                                      data ... end  (spending the client's credit)
    credit(n) as the body is read     credit(n) as the request body is read
    ping when quiet                   ping when quiet
    cancel (client gone)              error(fault) (handler failed, stream lost, shutdown)

Errors (``soulbox.core.errors``): ``TunnelError`` and its subclasses.
"""

from __future__ import annotations

from .tunnel_client import TunnelClient, TunnelStream
from .tunnel_flow import Body, Handler, Inbound, TunnelRequest, TunnelResponse, TunnelSettings
from .tunnel_server import TunnelServer, TunnelServerStats
from .tunnelframes import TunnelRequestHead, TunnelResponseHead

__all__ = [
    "Body",
    "Handler",
    "Inbound",
    "TunnelClient",
    "TunnelRequest",
    "TunnelRequestHead",
    "TunnelResponse",
    "TunnelResponseHead",
    "TunnelServer",
    "TunnelServerStats",
    "TunnelSettings",
    "TunnelStream",
]
