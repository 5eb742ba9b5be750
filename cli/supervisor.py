"""Child processes of ``soulbox up``: start, watch, restart with backoff, stop.

A :class:`Child` runs one command in its own process group (so a Ctrl-C in
the terminal reaches only the supervisor, which then stops children in
order) with stdout and stderr appended to ``<log_dir>/<name>.log`` and,
optionally, echoed line by line. When a child exits without being asked to,
the rest of its process group is killed and it is started again after
:meth:`Backoff.delay`; a run that lasted ``Backoff.healthy_after`` seconds
counts as healthy and resets the delay.

A :class:`Supervisor` starts children in order and stops them in reverse
order; consecutive children of one ``group`` (the workers, say) stop
together. Stopping is SIGTERM to the group, then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from soulbox.core.logging import get_logger

log = get_logger(__name__)

Echo = Callable[[str, bytes], None]
"""Receives (child name, one output line without its newline)."""

_CHUNK = 64 * 1024
_DRAIN_S = 1.0  # how long to wait for output after a child is gone


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential restart delay: ``initial * factor**(n-1)`` for the n-th crash in a row, capped."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    healthy_after: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.initial * self.factor ** max(0, failures - 1)))


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    """The child's whole environment; None inherits the supervisor's."""
    group: str | None = None
    """Consecutive children with the same group are stopped concurrently."""

    @property
    def stop_group(self) -> str:
        return self.group or self.name


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Child:
    """One supervised command. ``start`` once, ``stop`` (or ``kill``) any number of times."""

    def __init__(
        self,
        spec: ChildSpec,
        *,
        log_dir: Path,
        backoff: Backoff = Backoff(),
        echo: Echo | None = None,
        on_spawn: Callable[[Child], None] | None = None,
    ) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.restarts = 0
        self.last_exit: int | None = None
        self._backoff = backoff
        self._echo = echo
        self._on_spawn = on_spawn
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Spawn the command; raises OSError if it cannot be executed at all."""
        if self._watcher is not None:
            raise RuntimeError(f"child {self.name} already started")
        process = await self._spawn()
        self._started(process)
        self._watcher = asyncio.create_task(self._watch(process), name=f"watch-{self.name}")

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s; the exit code, if it ran."""
        self._stopping.set()
        process = self._process
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("child.killed", child=self.name, pid=process.pid, after_s=timeout)
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
            _signal_group(process.pid, signal.SIGKILL)  # whatever it left behind in its group
            log.info("child.stopped", child=self.name, pid=process.pid, code=process.returncode)
        if self._watcher is not None:
            await self._watcher
        await self._drain()
        return None if process is None else process.returncode

    def kill(self) -> None:
        """SIGKILL now, without waiting; a pending ``stop`` then returns at once."""
        self._stopping.set()
        if self._process is not None and self._process.returncode is None:
            _signal_group(self._process.pid, signal.SIGKILL)

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=out if self._echo is None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=None if self.spec.env is None else dict(self.spec.env),
                process_group=0,
            )
        except BaseException:
            out.close()
            raise
        if self._echo is not None and process.stdout is not None:
            self._pump = asyncio.create_task(self._copy(process.stdout, out, self._echo))
        else:
            out.close()  # the child has its own copy of the descriptor
        self._process = process
        return process

    def _started(self, process: asyncio.subprocess.Process) -> None:
        if self.restarts:
            log.warning("child.restarted", child=self.name, pid=process.pid, restarts=self.restarts)
        else:
            log.info("child.started", child=self.name, pid=process.pid)
        if self._on_spawn is not None:
            self._on_spawn(self)

    async def _copy(self, stream: asyncio.StreamReader, out: BinaryIO, echo: Echo) -> None:
        pending = b""
        try:
            while chunk := await stream.read(_CHUNK):
                out.write(chunk)
                out.flush()
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    echo(self.name, line)
            if pending:
                echo(self.name, pending)
        finally:
            out.close()

    async def _drain(self) -> None:
        pump, self._pump = self._pump, None
        if pump is None:
            return
        with contextlib.suppress(TimeoutError):  # a grandchild outside the group may hold the pipe
            await asyncio.wait_for(pump, _DRAIN_S)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            code = await process.wait()
            if self._stopping.is_set():
                return
            _signal_group(process.pid, signal.SIGKILL)
            await self._drain()
            self.last_exit = code
            failures = 1 if loop.time() - started >= self._backoff.healthy_after else failures + 1
            while True:
                delay = self._backoff.delay(failures)
                log.warning("child.exited", child=self.name, pid=process.pid, code=code, restart_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return
                try:
                    process = await self._spawn()
                    break
                except OSError as exc:
                    log.error("child.spawn_failed", child=self.name, error=str(exc))
                    failures += 1
            self.restarts += 1
            self._started(process)


class Supervisor:
    """Children started in order, stopped in reverse order, group by group."""

    def __init__(
        self,
        *,
        log_dir: Path,
        backoff: Backoff = Backoff(),
        echo: Echo | None = None,
        on_change: Callable[[Supervisor], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._backoff = backoff
        self._echo = echo
        self._on_change = on_change

    async def start(self, spec: ChildSpec) -> Child:
        if any(child.name == spec.name for child in self.children):
            raise ValueError(f"duplicate child name {spec.name!r}")
        child = Child(spec, log_dir=self.log_dir, backoff=self._backoff, echo=self._echo, on_spawn=self._spawned)
        self.children.append(child)
        try:
            await child.start()
        except BaseException:
            self.children.remove(child)
            raise
        return child

    def stop_order(self) -> list[list[Child]]:
        """Groups of children in the order they are stopped: reverse start order."""
        groups: list[list[Child]] = []
        for child in self.children:
            if groups and groups[-1][0].spec.stop_group == child.spec.stop_group:
                groups[-1].append(child)
            else:
                groups.append([child])
        return groups[::-1]

    async def stop_all(self, timeout: float) -> None:
        for group in self.stop_order():
            await asyncio.gather(*(child.stop(timeout) for child in group))

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()

    def _spawned(self, _child: Child) -> None:
        if self._on_change is not None:
            self._on_change(self)
