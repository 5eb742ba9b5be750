"""What ``soulbox up`` runs: the settings it settles on and the children it starts.

Children inherit the supervisor's environment (so a ``.env`` file or any
``SOULBOX_*`` variable means the same to them) plus these variables, which
pin what the supervisor decided:

    SOULBOX_DATA_DIR                   absolute data directory
    SOULBOX_NATS__URLS                 JSON list: the embedded server, or the --external-nats URLs
    SOULBOX_GATEWAY__HOST              gateway listen address
    SOULBOX_GATEWAY__PORT              gateway port
    SOULBOX_EVENTS__METRICS_HOST       events process /metrics listen address
    SOULBOX_EVENTS__METRICS_PORT       events process /metrics port
    SOULBOX_SCHEDULER__METRICS_HOST    scheduler /metrics listen address
    SOULBOX_SCHEDULER__METRICS_PORT    scheduler /metrics port (default: the events process' + 1)
    SOULBOX_WORKER__METRICS_HOST       workers' /metrics listen address
    SOULBOX_WORKER__METRICS_PORT       workers only: ``worker.metrics_port + n - 1`` for worker n
                                       (default base: the events process' port + 2)
    SOULBOX_LOG_LEVEL                  as resolved by the supervisor
    SOULBOX_LOG_FORMAT                 as resolved by the supervisor
    SOULBOX_WORKER__ID                 workers only: ``<worker id>-<n>``, stable across restarts
    PYTHONUNBUFFERED=1                 log lines reach the log files at once

Components start in this order and stop in the reverse one: NATS, the events
consumer (one process: billing, audit and metrics over one read of every event), the workers,
the scheduler, the trigger service, the gateway. Stopping thus goes from
the front door inwards — no new requests, no new dispatches, workers finish,
consumers drain the last events — and NATS goes last.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.natsserver import server_command
from soulbox.core.settings import Settings

from .supervisor import ChildSpec

_WORKER_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Endpoints:
    gateway: str
    metrics: str
    nats: tuple[str, ...]
    nats_monitor: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    settings: Settings
    nats: ChildSpec | None
    """The embedded nats-server, or None with an external NATS."""
    components: tuple[ChildSpec, ...]
    worker_ids: tuple[str, ...]
    endpoints: Endpoints


def resolve(settings: Settings) -> Settings:
    """An absolute data dir, metrics ports for the scheduler and workers (after the metrics
    consumer's, unless set) and, with the embedded server, NATS URLs that point at it."""
    base = settings.events.metrics_port
    update: dict[str, object] = {
        "data_dir": settings.data_dir.expanduser().resolve(),
        "scheduler": settings.scheduler.model_copy(
            update={"metrics_port": settings.scheduler.metrics_port or base + 1}
        ),
        "worker": settings.worker.model_copy(update={"metrics_port": settings.worker.metrics_port or base + 2}),
    }
    if settings.embedded_nats.enabled:
        embedded = settings.embedded_nats
        url = f"nats://{url_host(embedded.host)}:{embedded.port}"
        update["nats"] = settings.nats.model_copy(update={"urls": [url]})
    return settings.model_copy(update=update)


def client_host(host: str) -> str:
    """The address a client on this machine uses for a server listening on ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def url_host(host: str) -> str:
    """:func:`client_host`, bracketed if it is an IPv6 address."""
    host = client_host(host)
    return f"[{host}]" if ":" in host else host


def endpoints(settings: Settings) -> Endpoints:
    gateway, events, embedded = settings.gateway, settings.events, settings.embedded_nats
    monitor = None
    if embedded.enabled and embedded.monitor_port:
        monitor = f"http://{url_host(embedded.host)}:{embedded.monitor_port}"
    return Endpoints(
        gateway=f"http://{url_host(gateway.host)}:{gateway.port}",
        metrics=f"http://{url_host(events.metrics_host)}:{events.metrics_port}/metrics",
        nats=tuple(settings.nats.urls),
        nats_monitor=monitor,
    )


def worker_metrics_port(settings: Settings, n: int) -> int:
    """The ``/metrics`` port of worker ``n`` (from 1); 0 when workers serve none."""
    base = settings.worker.metrics_port
    return base + n - 1 if base else 0


def owned_ports(settings: Settings, *, workers: int = 1) -> dict[str, tuple[str, int]]:
    """The addresses ``up`` is about to listen on, by purpose."""
    ports = {
        "gateway": (settings.gateway.host, settings.gateway.port),
        "metrics": (settings.events.metrics_host, settings.events.metrics_port),
    }
    if settings.scheduler.metrics_port:
        ports["scheduler metrics"] = (settings.scheduler.metrics_host, settings.scheduler.metrics_port)
    if settings.worker.metrics_port:
        for n in range(1, workers + 1):
            ports[f"worker-{n} metrics"] = (settings.worker.metrics_host, worker_metrics_port(settings, n))
    embedded = settings.embedded_nats
    if embedded.enabled:
        ports["nats"] = (embedded.host, embedded.port)
        if embedded.monitor_port:
            ports["nats monitor"] = (embedded.host, embedded.monitor_port)
    return ports


def drop_busy_monitor(settings: Settings) -> tuple[Settings, str | None]:
    """Without the embedded NATS monitoring port if something else holds it: it is optional."""
    embedded = settings.embedded_nats
    if not (embedded.enabled and embedded.monitor_port and listen_problem(embedded.host, embedded.monitor_port)):
        return settings, None
    note = f"NATS monitoring port {embedded.monitor_port} is not free: the embedded NATS runs without it"
    quiet = embedded.model_copy(update={"monitor_port": 0})
    return settings.model_copy(update={"embedded_nats": quiet}), note


def listen_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host:port`` now ("in use", …), or None if it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return None


def worker_ids(settings: Settings, count: int) -> tuple[str, ...]:
    """``<worker id>-1`` … ``-count``; the id is usable as a NATS subject token."""
    prefix = _WORKER_ID_UNSAFE.sub("-", settings.worker.id).strip("-") or "worker"
    return tuple(f"{prefix}-{n}" for n in range(1, count + 1))


def child_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(
        {
            "SOULBOX_DATA_DIR": str(settings.data_dir),
            "SOULBOX_NATS__URLS": json.dumps(list(settings.nats.urls)),
            "SOULBOX_GATEWAY__HOST": settings.gateway.host,
            "SOULBOX_GATEWAY__PORT": str(settings.gateway.port),
            "SOULBOX_EVENTS__METRICS_HOST": settings.events.metrics_host,
            "SOULBOX_EVENTS__METRICS_PORT": str(settings.events.metrics_port),
            "SOULBOX_SCHEDULER__METRICS_HOST": settings.scheduler.metrics_host,
            "SOULBOX_SCHEDULER__METRICS_PORT": str(settings.scheduler.metrics_port),
            "SOULBOX_WORKER__METRICS_HOST": settings.worker.metrics_host,
            "SOULBOX_LOG_LEVEL": settings.log_level,
            "SOULBOX_LOG_FORMAT": settings.log_format,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def default_nats_config() -> Path | None:
    """``infra/nats.conf`` of the source tree this package runs from, if there is one."""
    path = Path(__file__).resolve().parent.parent / "infra" / "nats.conf"
    return path if path.is_file() else None


def nats_store_dir(settings: Settings) -> Path:
    return Path(settings.data_dir, "nats")


def make_plan(
    settings: Settings,
    *,
    workers: int,
    nats_config: Path | None,
    python: str = sys.executable,
    base_env: Mapping[str, str] | None = None,
) -> Plan:
    """Everything ``up`` starts, from settings already passed through :func:`resolve`."""
    if workers < 1:
        raise ValueError("at least one worker is needed")
    env = child_env(settings, os.environ if base_env is None else base_env)
    nats = None
    embedded = settings.embedded_nats
    if embedded.enabled:
        argv = server_command(
            host=embedded.host,
            port=embedded.port,
            store_dir=nats_store_dir(settings),
            monitor_port=embedded.monitor_port or None,
            config=nats_config,
        )
        nats = ChildSpec("nats", tuple(argv))
    ids = worker_ids(settings, workers)
    worker = (python, "-m", "soulbox.runtimes.worker")
    components = [ChildSpec("events", (python, "-m", "soulbox.events", "run"), env, group="events")]
    components += [
        ChildSpec(
            f"worker-{n}",
            worker,
            {**env, "SOULBOX_WORKER__ID": wid, "SOULBOX_WORKER__METRICS_PORT": str(worker_metrics_port(settings, n))},
            group="workers",
        )
        for n, wid in enumerate(ids, start=1)
    ]
    components.append(ChildSpec("scheduler", (python, "-m", "soulbox.scheduler"), env))
    # Like the gateway, the trigger service makes work: it stops before the scheduler.
    components.append(ChildSpec("triggers", (python, "-m", "soulbox.triggers"), env))
    components.append(ChildSpec("gateway", (python, "-m", "soulbox.gateway"), env))
    return Plan(settings, nats, tuple(components), ids, endpoints(settings))
