"""``soulbox up``: NATS, the topology, the components, readiness, a clean stop.

On SIGINT or SIGTERM the children are stopped in reverse start order (see
:mod:`.stack`), NATS last, and ``up`` exits 0; a second signal kills what is
left at once. A failure while starting exits 1 after stopping what started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from soulbox.core.bus import ensure_topology
from soulbox.core.errors import SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import WorkerHeartbeat

from .probes import connect_within, readiness_report, wait_ready
from .stack import Plan, client_host, listen_problem, nats_store_dir, owned_ports, url_host, worker_metrics_port
from .state import ChildState, ProcessRef, StackState, Urls, read_state, remove_state, write_state
from .supervisor import Child, Supervisor

log = get_logger(__name__)

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")


@dataclass(frozen=True, slots=True)
class UpOptions:
    foreground_logs: bool = False
    stop_timeout: float = 10.0
    nats_start_timeout: float = 15.0
    connect_timeout: float = 30.0
    ready_warn_after: float = 60.0


class StartupError(Exception):
    """``up`` cannot bring the stack up; the message says why."""


class Stack:
    """One run of ``soulbox up`` for one :class:`Plan`."""

    def __init__(self, plan: Plan, options: UpOptions, console: Console) -> None:
        self.plan = plan
        self.options = options
        self.console = console
        self.data_dir = plan.settings.data_dir
        self.ready = False
        echo = self._echo if options.foreground_logs else None
        self.supervisor = Supervisor(log_dir=self.data_dir / "logs", echo=echo, on_change=self._save)

    async def run(self) -> int:
        """Bring the stack up and keep it up until a signal; the exit code."""
        try:
            self._preflight()
        except StartupError as exc:
            self._error(str(exc))
            return 1
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                self.console.print("[red]second signal: killing everything now[/]")
                self.supervisor.kill_all()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        body = asyncio.create_task(self._serve())
        stopper = asyncio.create_task(stop.wait())
        code = 0
        try:
            await asyncio.wait({body, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if body.done():
                code = self._failure(body)
        finally:
            body.cancel()
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await body
            self.console.print("stopping SoulBox…")
            await self.supervisor.stop_all(self.options.stop_timeout)
            remove_state(self.data_dir, owner=os.getpid())
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        self.console.print("SoulBox stopped." if code == 0 else "[red]SoulBox could not start.[/]")
        return code

    def _failure(self, body: asyncio.Task[None]) -> int:
        exc = body.exception()
        if exc is None:
            return 0
        if not isinstance(exc, StartupError):
            log.error("up.failed", error=repr(exc), exc_info=exc)
        self._error(str(exc) if isinstance(exc, StartupError | SoulboxError) else repr(exc))
        return 1

    def _error(self, message: str) -> None:
        self.console.print(Text.assemble(("error: ", "bold red"), message))

    def _preflight(self) -> None:
        previous = read_state(self.data_dir)
        if previous is not None and previous.supervisor.alive():
            raise StartupError(
                f"SoulBox already runs from {self.data_dir} (supervisor pid {previous.supervisor.pid}); "
                "use `soulbox status` or `soulbox down`"
            )
        if previous is not None:
            leftovers = [c.name for c in previous.children if c.process is not None and c.process.alive()]
            if leftovers:
                raise StartupError(
                    f"processes of an earlier run are still alive ({', '.join(leftovers)}): run `soulbox down`"
                )
        problems = [
            f"{what} {host}:{port} ({problem})"
            for what, (host, port) in owned_ports(self.plan.settings, workers=len(self.plan.worker_ids)).items()
            if (problem := listen_problem(host, port)) is not None
        ]
        if problems:
            raise StartupError(f"cannot listen on {', '.join(problems)}; see `soulbox up --help` for the ports")

    async def _serve(self) -> None:
        settings = self.plan.settings
        if self.plan.nats is not None:
            nats_store_dir(settings).mkdir(parents=True, exist_ok=True)
            child = await self.supervisor.start(self.plan.nats)
            await self._wait_for_nats(child)
        nc = await connect_within(settings, name="soulbox-up", timeout=self.options.connect_timeout)
        try:
            js = nc.jetstream()
            await ensure_topology(js, settings)
            for spec in self.plan.components:
                await self.supervisor.start(spec)
            self._save(self.supervisor)
            live = await self._wait_ready(nc)
        finally:
            await nc.close()
        self.console.print(summary(self.plan, live))
        self.console.print(hint(self.plan), soft_wrap=True)
        self.ready = True
        self._save(self.supervisor)
        await asyncio.Future[None]()  # until cancelled by a signal

    async def _wait_for_nats(self, child: Child) -> None:
        embedded = self.plan.settings.embedded_nats
        host = client_host(embedded.host)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.nats_start_timeout
        while child.running:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, embedded.port), 0.5)
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        tail = await asyncio.to_thread(_tail, child.log_path, 15)
        raise StartupError(f"nats-server did not start on {host}:{embedded.port}; {child.log_path}:\n{tail}")

    async def _wait_ready(self, nc: NATS) -> list[WorkerHeartbeat]:
        js = nc.jetstream()
        gateway, ids = self.plan.endpoints.gateway, self.plan.worker_ids
        ttl = self.plan.settings.worker.heartbeat_ttl_s
        try:
            return await asyncio.wait_for(
                wait_ready(js, gateway=gateway, worker_ids=ids, ttl_s=ttl), self.options.ready_warn_after
            )
        except TimeoutError:
            missing = await readiness_report(js, gateway=gateway, worker_ids=ids, ttl_s=ttl)
            waited = f"still not ready after {self.options.ready_warn_after:g}s: "
            self.console.print(Text.assemble((waited, "yellow"), f"{missing}; logs in {self.supervisor.log_dir}"))
        return await wait_ready(js, gateway=gateway, worker_ids=ids, ttl_s=ttl)

    def _save(self, supervisor: Supervisor) -> None:
        plan, settings = self.plan, self.plan.settings
        ports = {"gateway": settings.gateway.port, "metrics": settings.events.metrics_port}
        if settings.scheduler.metrics_port:
            ports["scheduler_metrics"] = settings.scheduler.metrics_port
        if settings.worker.metrics_port:
            for n in range(1, len(plan.worker_ids) + 1):
                ports[f"worker_{n}_metrics"] = worker_metrics_port(settings, n)
        if plan.nats is not None:
            ports["nats"] = settings.embedded_nats.port
            if settings.embedded_nats.monitor_port:
                ports["nats_monitor"] = settings.embedded_nats.monitor_port
        e = plan.endpoints
        write_state(
            StackState(
                supervisor=ProcessRef.of(os.getpid()),
                data_dir=self.data_dir,
                ready=self.ready,
                embedded_nats=plan.nats is not None,
                urls=Urls(gateway=e.gateway, metrics=e.metrics, nats=list(e.nats), nats_monitor=e.nats_monitor),
                ports=ports,
                worker_ids=list(plan.worker_ids),
                children=[
                    ChildState(
                        name=child.name,
                        process=None if child.pid is None else ProcessRef.of(child.pid),
                        argv=list(child.spec.argv),
                        log=child.log_path,
                        restarts=child.restarts,
                    )
                    for child in supervisor.children
                ],
            )
        )

    def _echo(self, name: str, line: bytes) -> None:
        colour = _COLOURS[zlib.crc32(name.encode()) % len(_COLOURS)]
        text = Text.assemble((f"{name:>10} | ", colour), line.decode("utf-8", "replace"))
        self.console.print(text, soft_wrap=True, highlight=False)


def summary(plan: Plan, live: list[WorkerHeartbeat]) -> Panel:
    e, settings = plan.endpoints, plan.settings
    rows = [("Gateway", e.gateway), ("Metrics", e.metrics)]
    if settings.scheduler.metrics_port:
        rows.append(
            ("", f"http://{url_host(settings.scheduler.metrics_host)}:{settings.scheduler.metrics_port}/metrics")
        )
    for n in range(1, len(plan.worker_ids) + 1) if settings.worker.metrics_port else ():
        rows.append(("", f"http://{url_host(settings.worker.metrics_host)}:{worker_metrics_port(settings, n)}/metrics"))
    rows.append(("", f"{e.gateway}/metrics"))
    rows.append(("NATS", ", ".join(e.nats) + (" (embedded)" if plan.nats is not None else " (external)")))
    if e.nats_monitor:
        rows.append(("NATS monitor", e.nats_monitor))
    rows.append(("Workers", f"{len(plan.worker_ids)} started, live: {', '.join(b.worker_id for b in live)}"))
    rows += [("Data", str(settings.data_dir)), ("Logs", str(settings.data_dir / "logs"))]
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        grid.add_row(Text(label, style="bold"), Text(value))
    return Panel(grid, title="[bold green]SoulBox is up", expand=False)


def hint(plan: Plan) -> Text:
    """Copy-paste commands; printed unwrapped so that they stay copy-pasteable."""
    gateway = plan.endpoints.gateway
    return Text(
        "Deploy a WASI module and call it:\n"
        f"  curl -F name=hello -F module=@hello.wasm {gateway}/v1/functions\n"
        f"  curl --data-binary 'world' {gateway}/v1/functions/hello/invoke\n"
        "Stop with Ctrl-C here or `soulbox down` elsewhere; `soulbox status` shows the stack.",
        style="dim",
    )


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            return b"".join(deque(f, maxlen=lines)).decode("utf-8", "replace").rstrip()
    except OSError:
        return "(no log)"
