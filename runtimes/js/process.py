"""One runtime process serving one function: spawn, control channel, output, limits.

The process runs in its own session (process group), so a kill takes its
children with it. Its memory is accounted by :class:`~.memory.ProcessMemory`.
Sandboxed (:mod:`.sandbox`), the spawned process is bubblewrap's monitor and
the runtime is the sandbox's pid 1: memory is sampled there and a kill goes
there (the kernel then ends its whole pid namespace, and the monitor exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from soulbox.core.logging import get_logger

from ..protocol import Output
from .cgroup import MemoryCgroup
from .config import Mode
from .memory import ProcessMemory
from .sandbox import Spawn
from .wire import Frame, encode_frame, read_frame

log = get_logger(__name__)

T = TypeVar("T")
TAIL = 8192  # bytes of stderr kept to classify a crash (e.g. V8 "out of memory")
READ = 64 * 1024


class Breach(StrEnum):
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"


class JsProcess:
    """A spawned ``bun``/``deno`` running ``shim.mjs``; use :meth:`start`."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        mode: Mode,
        *,
        poll_s: float,
        cgroup: MemoryCgroup | None = None,
        sandbox: Spawn | None = None,
        runtime_pid: int | None = None,
    ) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.runtime_pid = runtime_pid or proc.pid
        """The runtime itself: ``pid``, or the sandbox's pid 1 (as the host sees it)."""
        self.mode = mode
        self.memory = ProcessMemory(self.runtime_pid, poll_s=poll_s, cgroup=cgroup)
        self._sandbox = sandbox
        self._runtime_fd = os.pidfd_open(runtime_pid) if runtime_pid is not None else -1
        self.sinks: tuple[Output | None, Output | None] = (None, None)
        self.stderr_tail = bytearray()
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(proc.pid)
        self._loop.add_reader(self._pidfd, self._reap)
        self._tasks: list[asyncio.Task[None]] = []

    async def _attach_pipes(self) -> None:
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for index, pipe in enumerate((self._proc.stdout, self._proc.stderr)):
            reader = asyncio.StreamReader(limit=READ)
            await self._loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r), pipe)  # type: ignore[misc]
            self._tasks.append(asyncio.create_task(self._pump(reader, index)))

    def _reap(self) -> None:
        # The pidfd is readable once the process is a zombie; wait4 reaps it and
        # reports its peak RSS, which asyncio's own child watchers throw away.
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.memory.max_rss = usage.ru_maxrss * 1024
        code = os.waitstatus_to_exitcode(status)
        self._proc.returncode = code  # so Popen never waits for a pid that is not its own any more
        self._exited.set_result(code)

    @classmethod
    async def start(
        cls,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        socket_path: Path,
        mode: Mode,
        bindings: Mapping[str, str],
        timeout_s: float,
        memory_limit: int,
        poll_s: float,
        cgroup_parent: Path | None = None,
        sandbox: Spawn | None = None,
    ) -> tuple[JsProcess, Breach | Frame | None]:
        """Spawn, connect and load: returns the process and what ended the start.

        The second item is the ``ready`` frame on success, a ``Breach``, an
        ``error`` frame (the module failed to load) or ``None`` (it died).
        ``sandbox``: ``argv`` is its command line; it is closed with the process.
        """
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connected.done():
                writer.close()
            else:
                connected.set_result((reader, writer))

        server = await asyncio.start_unix_server(on_connect, path=str(socket_path), limit=READ)
        try:
            # Popen, not asyncio's subprocess: its child watchers reap without the
            # rusage that gives the exact peak RSS (see _reap). Spawning is a vfork.
            try:
                if sandbox is not None:  # connecting takes write access; its directory is the sandbox uid's alone
                    os.chown(socket_path, sandbox.uid, sandbox.uid)
                proc = subprocess.Popen(  # noqa: ASYNC220
                    argv,
                    stdin=subprocess.PIPE if mode is Mode.SCRIPT else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    pass_fds=sandbox.pass_fds if sandbox is not None else (),
                )
            except BaseException:
                if sandbox is not None:
                    sandbox.close()
                raise
            cgroup = None
            runtime_pid = None
            try:
                if sandbox is not None:
                    sandbox.spawned()
                    # None: bubblewrap gave up; the process then dies and the start reports its stderr.
                    runtime_pid = await sandbox.sandbox_pid()
                if cgroup_parent is not None and (sandbox is None or runtime_pid is not None):
                    cgroup = MemoryCgroup.create(cgroup_parent)
                    cgroup.add(runtime_pid or proc.pid)
                self = cls(proc, mode, poll_s=poll_s, cgroup=cgroup, sandbox=sandbox, runtime_pid=runtime_pid)
            except BaseException:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if cgroup is not None:
                    cgroup.remove()
                if sandbox is not None:
                    sandbox.close()
                raise
            if sandbox is not None:
                sandbox.go()  # in its cgroup: the runtime may exec
            await self._attach_pipes()
            outcome = await self.guard(self._connect(connected, bindings, memory_limit), timeout_s, None)
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)  # connected (or failed): nobody else may connect
        if outcome is not True:
            return self, outcome if isinstance(outcome, Breach) else None
        return self, await self.guard(self.frames.get(), timeout_s, memory_limit)

    async def _connect(
        self,
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
        bindings: Mapping[str, str],
        memory_limit: int,
    ) -> bool:
        either: set[asyncio.Future[Any]] = {connected, self._exited}
        done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if connected not in done:
            return False
        reader, self._writer = connected.result()
        self.memory.set_baseline(memory_limit)  # the runtime and the shim, before the function's module
        self._tasks.append(asyncio.create_task(self._read_frames(reader)))
        self.send({"type": "init", "env": dict(bindings)})
        return True

    # ---- I/O ----------------------------------------------------------------

    def send(self, meta: dict[str, Any], payload: bytes = b"") -> None:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("the runtime process is not connected")
        self._writer.write(encode_frame(meta, payload))

    async def feed_stdin(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin without blocking, then close it."""
        stdin = self._proc.stdin
        if stdin is None:
            return
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    ready = self._loop.create_future()
                    self._loop.add_writer(fd, ready.set_result, None)
                    try:
                        await ready
                    finally:
                        self._loop.remove_writer(fd)
        except OSError:  # EPIPE: the process does not read its input, or is gone
            pass
        finally:
            stdin.close()

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self.frames.put_nowait(await read_frame(reader))
        except Exception:  # EOF, reset or a malformed frame: the channel is over
            self.frames.put_nowait(None)

    async def _pump(self, stream: asyncio.StreamReader, index: int) -> None:
        while chunk := await stream.read(READ):
            sink = self.sinks[index]
            if sink is not None:
                sink.write(chunk)
            elif chunk.strip():
                log.debug("js.stray_output", pid=self.pid, stream="stderr" if index else "stdout", data=chunk[:512])
            if index:
                self.stderr_tail += chunk
                del self.stderr_tail[:-TAIL]

    # ---- limits -------------------------------------------------------------

    async def guard(self, work: Awaitable[T], timeout_s: float, memory_limit: int | None) -> T | Breach:
        """Await ``work`` within the deadline and the memory limit; kill the process on a breach."""
        if memory_limit is None or self.memory.cgroup is not None:  # the kernel enforces the memory limit
            try:
                async with asyncio.timeout(max(0.0, timeout_s)):
                    return await work
            except TimeoutError:
                self.kill()
                return Breach.TIMEOUT
        task = asyncio.ensure_future(work)
        waiting: set[asyncio.Future[Any]] = {task}
        if memory_limit is not None:
            waiting.add(asyncio.ensure_future(self.memory.watch(memory_limit)))
        try:
            done, _ = await asyncio.wait(waiting, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in waiting:
                if pending is not task:
                    pending.cancel()
        if task in done:
            return task.result()
        task.cancel()
        self.kill()
        return Breach.OUT_OF_MEMORY if done else Breach.TIMEOUT

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def exited(self, grace_s: float = 1.0) -> int:
        """Wait for the exit, then for the output pipes and the control channel to be read to the end."""
        code = await asyncio.shield(self._exited)
        self.kill()  # anything the function left running in its group
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        return code

    def kill(self) -> None:
        if self._runtime_fd >= 0:
            # Pid 1 of the sandbox: the kernel kills its namespace; the monitor reaps it and exits.
            # The monitor is left alone so that it, not an init elsewhere, reaps pid 1.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._runtime_fd, signal.SIGKILL)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill and reap; safe to call more than once."""
        self.kill()
        if self._writer is not None:
            self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._exited), 5)
        if not self._exited.done() and self._runtime_fd >= 0:  # the monitor outlived pid 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._exited), 5)
        if not self._exited.done():  # unkillable (D state): stop watching it
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._exited.set_result(-signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self.memory.close()
        if self._runtime_fd >= 0:
            os.close(self._runtime_fd)
            self._runtime_fd = -1
        if self._sandbox is not None and self._exited.done():  # its uid is free only once it is gone
            self._sandbox.close()
            self._sandbox = None


def socket_path(directory: Path) -> Path:
    return directory / f"{uuid.uuid4().hex[:16]}.sock"
