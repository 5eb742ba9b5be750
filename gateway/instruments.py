"""The gateway's own Prometheus metrics, on a registry of their own (served at ``GET /metrics``).

    soulbox_gateway_requests_total{method,route,status}        finished requests
    soulbox_gateway_request_duration_seconds{method,route}     time to the end of the response
    soulbox_gateway_inflight_requests                          requests being handled now

``route`` is the route template (``/v1/functions/{name}``), ``sandbox`` for
data-plane requests to any sandbox, or ``unmatched``: never a raw path or a
sandbox id, so the number of series stays bounded.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds, 1 ms .. 60 s."""

SANDBOX_ROUTE: Final = "sandbox"
UNMATCHED_ROUTE: Final = "unmatched"
NO_RESPONSE: Final = "0"
"""The status label of a request that ended before a response started."""

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class GatewayInstruments:
    """The gateway's request metrics; one per app, kept on ``app.state.instruments``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "soulbox_gateway_requests",
            "Requests answered by the gateway, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "soulbox_gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "soulbox_gateway_inflight_requests", "Requests being handled now.", registry=self.registry
        )

    def started(self) -> None:
        self.inflight.inc()

    def finished(self, method: str, route: str, status: int | None, seconds: float) -> None:
        """A request that :meth:`started` is over (``status`` None: no response was sent)."""
        self.inflight.dec()
        method = method if method in _METHODS else "other"  # clients may send any token
        self.requests.labels(method, route, str(status) if status else NO_RESPONSE).inc()
        self.duration.labels(method, route).observe(seconds)


def instruments_of(scope_app: object) -> GatewayInstruments | None:
    """The app's instruments (None for an app built without them)."""
    found = getattr(getattr(scope_app, "state", None), "instruments", None)
    return found if isinstance(found, GatewayInstruments) else None


async def metrics(request: Request) -> Response:
    """``GET /metrics``: the gateway's registry in the Prometheus text format."""
    instruments = instruments_of(request.app)
    body = generate_latest(instruments.registry) if instruments is not None else b""
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
