"""``soulbox status``: processes, gateway readiness, streams and live workers.

With a ``state.json`` (a stack run by ``soulbox up``) its pids and URLs are
used; without one, the URLs come from the settings, so the command also
reports on a stack run some other way. The stack is *up* when every recorded
process is alive, the gateway is ready, NATS answers and a worker is live.
"""

from __future__ import annotations

import httpx
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from soulbox.core import names
from soulbox.core.errors import SoulboxError
from soulbox.core.settings import Settings

from .probes import connect_within, gateway_ready, heartbeat_age, heartbeats
from .stack import endpoints, resolve
from .state import ProcessRef, read_state, state_path

STREAMS = (names.INVOCATIONS_STREAM, names.EVENTS_STREAM, names.AUDIT_STREAM)


class ProcessStatus(BaseModel):
    name: str
    pid: int | None
    alive: bool
    restarts: int = 0
    log: str | None = None


class ConsumerStatus(BaseModel):
    name: str
    pending: int
    ack_pending: int
    redelivered: int


class StreamStatus(BaseModel):
    name: str
    messages: int
    bytes: int
    consumers: list[ConsumerStatus]


class WorkerStatus(BaseModel):
    id: str
    host: str
    pid: int
    tiers: list[str]
    capacity: int
    in_flight: int
    age_s: float
    live: bool


class StackStatus(BaseModel):
    up: bool
    problems: list[str]
    data_dir: str
    state_file: str | None
    ready: bool | None
    processes: list[ProcessStatus]
    gateway: str
    gateway_ready: bool
    metrics: str
    nats: list[str]
    nats_reachable: bool
    streams: list[StreamStatus]
    workers: list[WorkerStatus]


async def collect(settings: Settings, *, timeout: float = 3.0) -> StackStatus:
    """Probe everything; never raises for a component that is down."""
    settings = resolve(settings)
    state = read_state(settings.data_dir)
    problems: list[str] = []
    processes: list[ProcessStatus] = []
    if state is None:
        e = endpoints(settings)
        gateway, metrics, nats_urls = e.gateway, e.metrics, list(e.nats)
    else:
        gateway, metrics, nats_urls = state.urls.gateway, state.urls.metrics, state.urls.nats
        settings = settings.model_copy(update={"nats": settings.nats.model_copy(update={"urls": nats_urls})})
        processes.append(_process("supervisor", state.supervisor, 0, None))
        processes += [_process(c.name, c.process, c.restarts, str(c.log)) for c in state.children]
        problems += [f"process {p.name} is not running" for p in processes if not p.alive]
    async with httpx.AsyncClient(timeout=timeout) as client:
        ready = await gateway_ready(client, gateway)
    if not ready:
        problems.append(f"gateway {gateway}/readyz is not 200")
    streams: list[StreamStatus] = []
    workers: list[WorkerStatus] = []
    reachable = False
    try:
        nc = await connect_within(settings, name="soulbox-status", timeout=timeout)
    except SoulboxError as exc:
        problems.append(exc.message)
    else:
        reachable = True
        try:
            js = nc.jetstream()
            streams = await _streams(js, problems)
            ttl = settings.worker.heartbeat_ttl_s
            for beat in sorted(await heartbeats(js), key=lambda b: b.worker_id):
                age = heartbeat_age(beat)
                workers.append(
                    WorkerStatus(
                        id=beat.worker_id,
                        host=beat.host,
                        pid=beat.pid,
                        tiers=[str(t) for t in beat.tiers],
                        capacity=beat.capacity,
                        in_flight=beat.in_flight,
                        age_s=round(age, 2),
                        live=age <= ttl,
                    )
                )
        finally:
            await nc.close()
        if not any(w.live for w in workers):
            problems.append("no live worker")
    return StackStatus(
        up=not problems,
        problems=problems,
        data_dir=str(settings.data_dir),
        state_file=None if state is None else str(state_path(settings.data_dir)),
        ready=None if state is None else state.ready,
        processes=processes,
        gateway=gateway,
        gateway_ready=ready,
        metrics=metrics,
        nats=nats_urls,
        nats_reachable=reachable,
        streams=streams,
        workers=workers,
    )


def _process(name: str, ref: ProcessRef | None, restarts: int, log: str | None) -> ProcessStatus:
    alive = ref is not None and ref.alive()
    return ProcessStatus(name=name, pid=None if ref is None else ref.pid, alive=alive, restarts=restarts, log=log)


async def _streams(js: JetStreamContext, problems: list[str]) -> list[StreamStatus]:
    found: list[StreamStatus] = []
    for name in STREAMS:
        try:
            info = await js.stream_info(name)
            consumers = await js.consumers_info(name)
        except NotFoundError:
            problems.append(f"stream {name} does not exist")
            continue
        found.append(
            StreamStatus(
                name=name,
                messages=info.state.messages,
                bytes=info.state.bytes,
                consumers=[
                    ConsumerStatus(
                        name=c.name,
                        pending=c.num_pending or 0,
                        ack_pending=c.num_ack_pending or 0,
                        redelivered=c.num_redelivered or 0,
                    )
                    for c in sorted(consumers, key=lambda c: c.name)
                ],
            )
        )
    return found


def render(status: StackStatus) -> Group:
    verdict = Text("SoulBox is up", style="bold green") if status.up else Text("SoulBox is not up", style="bold red")
    urls = Table.grid(padding=(0, 2))
    _row(urls, "Gateway", status.gateway, _flag(status.gateway_ready, "ready", "not ready"))
    _row(urls, "Metrics", status.metrics, "")
    _row(urls, "NATS", ", ".join(status.nats), _flag(status.nats_reachable, "reachable", "unreachable"))
    _row(urls, "Data", status.data_dir, "")
    parts: list[Table | Text] = [verdict, urls]
    if status.processes:
        table = Table("process", "pid", "state", "restarts", "log", title="Processes", title_justify="left")
        for p in status.processes:
            _row(table, p.name, p.pid or "-", _flag(p.alive, "running", "dead"), p.restarts, p.log or "")
        parts.append(table)
    if status.streams:
        table = Table(
            "stream",
            "messages",
            "bytes",
            "consumer",
            "pending",
            "ack pending",
            "redelivered",
            title="Streams",
            title_justify="left",
        )
        for s in status.streams:
            _row(table, s.name, s.messages, s.bytes, "", "", "", "")
            for c in s.consumers:
                _row(table, "", "", "", c.name, c.pending, c.ack_pending, c.redelivered)
        parts.append(table)
    if status.workers:
        table = Table(
            "worker",
            "host",
            "pid",
            "tiers",
            "in flight",
            "capacity",
            "heartbeat",
            title="Workers",
            title_justify="left",
        )
        for w in status.workers:
            beat = Text(f"{w.age_s:.1f}s ago", style="green" if w.live else "red")
            _row(table, w.id, w.host, w.pid, ",".join(w.tiers), w.in_flight, w.capacity, beat)
        parts.append(table)
    if status.problems:
        parts.append(Text("\n".join(f"• {p}" for p in status.problems), style="yellow"))
    return Group(*parts)


def _row(table: Table, *cells: str | int | Text) -> None:
    """Cells as plain text: a URL such as http://[::1]:8470 is not markup."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in cells))


def _flag(ok: bool, yes: str, no: str) -> Text:
    return Text(yes, style="green") if ok else Text(no, style="red")


def print_status(status: StackStatus, console: Console, *, as_json: bool) -> None:
    if as_json:
        print(status.model_dump_json(indent=2), file=console.file, flush=True)
    else:
        console.print(render(status))
