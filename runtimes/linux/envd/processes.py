"""Child processes of envd: spawn (pipes or a PTY), output fan-out to subscribers, input, signals, reaping."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
from dataclasses import dataclass, field

from .users import User

READ_SIZE = 32 * 1024
QUEUE_DEPTH = 64
# After the process exited, how long a quiet PTY may still deliver what the line discipline holds.
PTY_FLUSH_GRACE = 0.05


@dataclass(frozen=True)
class Output:
    """A piece of output: kind is "stdout", "stderr" or "pty"."""

    kind: str
    data: bytes


@dataclass(frozen=True)
class Exit:
    """How the process ended, in the terms E2B reports (Go's ProcessState)."""

    exit_code: int
    exited: bool
    status: str
    error: str | None


@dataclass
class Config:
    """What was asked to run."""

    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    tag: str | None = None
    pty_size: tuple[int, int] | None = None  # rows, cols
    stdin: bool = False
    env: dict[str, str] = field(default_factory=dict)  # the full environment it runs with


def _set_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Resize a terminal (the PTY's foreground job gets SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _resolve(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(True)


def _exit_of(status: int) -> Exit:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name[3:].lower() if sig in signal.Signals._value2member_map_ else str(sig)
        text = "killed" if sig == signal.SIGKILL else "terminated" if sig == signal.SIGTERM else name
        return Exit(-1, False, f"signal: {text}", f"signal: {text}")
    code = os.waitstatus_to_exitcode(status)
    text = f"exit status {code}"
    return Exit(code, True, text, None if code == 0 else text)


class Process:
    """A running child and everything attached to it."""

    def __init__(self, popen: subprocess.Popen[bytes], config: Config, master: int | None, stdin: int | None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.master = master
        self.stdin = stdin
        self.exit: Exit | None = None
        self.subscribers: list[asyncio.Queue[Output | Exit]] = []
        self.ended = asyncio.Event()
        self._exited = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []
        self._finisher: asyncio.Task[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._closing = False

    def start(self, outputs: list[tuple[int, str]]) -> None:
        """Begin reading the output descriptors."""
        self._pumps = [asyncio.create_task(self._pump(fd, kind)) for fd, kind in outputs]
        self._finisher = asyncio.create_task(self._finish())

    def subscribe(self) -> asyncio.Queue[Output | Exit]:
        """A queue receiving every later output and then the exit."""
        queue: asyncio.Queue[Output | Exit] = asyncio.Queue(maxsize=QUEUE_DEPTH)
        if self._closing:  # all output was delivered; only the exit is left
            assert self.exit is not None
            queue.put_nowait(self.exit)
        else:
            self.subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Output | Exit]) -> None:
        """Stop delivering to `queue`; frees a publisher blocked on it."""
        if queue in self.subscribers:
            self.subscribers.remove(queue)
        while not queue.empty():
            queue.get_nowait()

    async def _publish(self, item: Output | Exit) -> None:
        # Waiting on a full queue is the backpressure: a slow reader slows the process, never our memory.
        for queue in list(self.subscribers):
            if queue in self.subscribers:
                await queue.put(item)

    async def _wait_readable(self, fd: int, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(fd, _resolve, ready)
        exited = asyncio.create_task(self._exited.wait())
        try:
            done, _ = await asyncio.wait({ready, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return ready in done
        finally:
            loop.remove_reader(fd)
            exited.cancel()
            ready.cancel()

    async def _pump(self, fd: int, kind: str) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    if self._exited.is_set():
                        # Everything the process wrote is buffered by now; a grandchild keeping the pipe
                        # open must not hold the end event back.
                        if kind != "pty" or not await self._wait_readable(fd, PTY_FLUSH_GRACE):
                            return
                        continue
                    await self._wait_readable(fd, None)
                    continue
                except OSError as e:
                    if e.errno == errno.EIO:  # PTY: every slave end closed
                        return
                    raise
                if not data:
                    return
                await self._publish(Output(kind, data))
        finally:
            if kind == "pty":
                self.master = None
            os.close(fd)

    def reaped(self, status: int) -> None:
        """The reaper collected the child's exit status."""
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.exit = _exit_of(status)
        self._exited.set()

    async def _finish(self) -> None:
        await self._exited.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                os.close(self.stdin)
            self.stdin = None
        assert self.exit is not None
        self._closing = True
        await self._publish(self.exit)
        self.subscribers.clear()
        self.ended.set()

    def kill_after(self, seconds: float) -> None:
        """SIGKILL the process group once `seconds` have passed (E2B's command timeout)."""
        loop = asyncio.get_running_loop()
        self._kill_timer = loop.call_later(seconds, self.signal, signal.SIGKILL)

    def signal(self, sig: int) -> None:
        """Signal the whole process group (the child leads its own session)."""
        if self.exit is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def write_input(self, data: bytes, to_pty: bool) -> None:
        """Write to stdin or to the PTY."""
        fd = self.master if to_pty else self.stdin
        if fd is None:
            what = "a PTY" if to_pty else "stdin enabled"
            raise InputError(f"process {self.pid} was not started with {what}")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                ready: asyncio.Future[bool] = loop.create_future()
                loop.add_writer(fd, _resolve, ready)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
                continue
            except OSError as e:
                raise InputError(f"writing input failed: {e.strerror}") from None
            view = view[written:]

    def close_stdin(self) -> None:
        """Send EOF: close the stdin pipe, or type ^D on a PTY."""
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.write(self.master, b"\x04")
            return
        if self.stdin is None:
            raise InputError(f"process {self.pid} has no open stdin")
        os.close(self.stdin)
        self.stdin = None

    def resize(self, rows: int, cols: int) -> None:
        """Resize the PTY."""
        if self.master is None:
            raise InputError(f"process {self.pid} has no PTY")
        set_winsize(self.master, rows, cols)


class InputError(Exception):
    """Input or resize asked of a process that cannot take it."""


class ProcessTable:
    """All processes envd started and has not yet seen end."""

    def __init__(self) -> None:
        self.processes: dict[int, Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, config: Config, user: User) -> Process:
        """Start a process; raises OSError when it cannot be executed."""
        switch = os.geteuid() == 0 and user.uid != 0
        opened: list[int] = []  # every descriptor to close should the spawn fail
        child_ends: list[int] = []  # the child's ends, closed in envd once it runs
        try:
            stdin_w = master = None
            if config.pty_size is not None:
                master, slave = pty.openpty()
                opened += [master, slave]
                child_ends.append(slave)
                rows, cols = config.pty_size
                set_winsize(master, rows or 24, cols or 80)
                stdio = (slave, slave, slave)
                outputs = [(master, "pty")]
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                opened += [out_r, out_w, err_r, err_w]
                child_ends += [out_w, err_w]
                stdin_r: int = subprocess.DEVNULL
                if config.stdin:
                    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                    opened += [stdin_r, stdin_w]
                    child_ends.append(stdin_r)
                stdio = (stdin_r, out_w, err_w)
                outputs = [(out_r, "stdout"), (err_r, "stderr")]
            popen = subprocess.Popen(
                [config.cmd, *config.args],
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                cwd=config.cwd,
                env=config.env,
                start_new_session=True,
                preexec_fn=_set_controlling_tty if master is not None else None,
                user=user.uid if switch else None,
                group=user.gid if switch else None,
                extra_groups=user.groups if switch else None,
            )
        except BaseException:
            for fd in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
        for fd, _ in outputs:
            os.set_blocking(fd, False)
        if stdin_w is not None:
            os.set_blocking(stdin_w, False)
        process = Process(popen, config, master, stdin_w)
        self.processes[process.pid] = process
        process.start(outputs)
        task = asyncio.get_running_loop().create_task(self._forget(process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return process

    async def _forget(self, process: Process) -> None:
        await process.ended.wait()
        self.processes.pop(process.pid, None)

    def find(self, pid: int | None = None, tag: str | None = None) -> Process | None:
        """A live process by pid or tag."""
        if pid is not None:
            return self.processes.get(pid)
        for process in self.processes.values():
            if tag is not None and process.config.tag == tag:
                return process
        return None

    def reap(self) -> None:
        """Collect every exited child (envd may be pid 1 and inherit orphans, which are dropped)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self.processes.get(pid)
            if process is not None and process.exit is None:
                process.reaped(status)

    def kill_all(self) -> None:
        """SIGKILL every process group (shutdown)."""
        for process in list(self.processes.values()):
            process.signal(signal.SIGKILL)
