"""One kernel process and the pipes the server talks to it through.

Three channels: requests go to the kernel's stdin as JSON lines; the kernel's messages
come back as JSON lines on a pipe passed as an extra fd; its fds 1 and 2 are pipes too, and
whatever lands there (subprocesses, C code, node's children) becomes `stream` messages.
The kernel runs in its own session, so an interrupt or a kill reaches its children too.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import json
import os
import signal
import struct
import sys
import termios
from collections.abc import Callable, Sequence
from typing import Any

from .errors import KernelStartFailed

Message = dict[str, Any]
Listener = Callable[[Message], None]

# The largest single kernel message (a result's MIME bundle, say); a longer line is dropped.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _RawPipes(asyncio.SubprocessProtocol):
    """Forwards the kernel's fds 1 and 2 as stream messages and notices its exit."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in (1, 2)}
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        text = self._decoders[fd].decode(data)
        if text:
            self._kernel.dispatch({"t": "stream", "name": "stdout" if fd == 1 else "stderr", "text": text})

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class Kernel:
    """A running kernel process; one request at a time (the caller serialises)."""

    def __init__(self, argv: Sequence[str], *, cwd: str, env: dict[str, str]) -> None:
        self._argv = list(argv)
        self._cwd = cwd
        self._env = env
        self._transport: asyncio.SubprocessTransport | None = None
        self._protocol: _RawPipes | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._done: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self.pid: int | None = None
        self.exit_reason: str | None = None

    async def start(self, timeout: float) -> None:
        """Spawn the process and wait for its `ready` message."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        argv = [a.replace("{fd}", str(write_fd)) for a in self._argv]
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _RawPipes(self),
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            raise KernelStartFailed(f"{argv[0]}: {exc}") from exc
        finally:
            os.close(write_fd)
        self._transport, self._protocol = transport, protocol
        self.pid = transport.get_pid()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        self._ready = loop.create_future()
        self._reader_task = asyncio.create_task(self._read(reader))
        startup_errors: list[str] = []
        self._listener = lambda msg: startup_errors.append(str(msg.get("text", "")))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except (TimeoutError, KernelStartFailed) as exc:
            await self.kill()
            detail = "".join(startup_errors).strip()[-2000:]
            raise KernelStartFailed(detail or str(exc) or "the kernel did not start in time") from exc
        finally:
            self._listener = None

    @property
    def alive(self) -> bool:
        return self._protocol is not None and not self._protocol.exited.done() and self.exit_reason is None

    def dispatch(self, msg: Message) -> None:
        """A message for the current execution (dropped between executions)."""
        if self._listener is not None:
            self._listener(msg)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_MESSAGE_BYTES: the rest of it is discarded
                self.dispatch({"t": "stream", "name": "stderr", "text": "[output message too large: dropped]\n"})
                continue
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            kind = msg.get("t")
            if kind == "ready":
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            elif kind == "done":
                await self._drain_raw()
                self._finish()
            else:
                self.dispatch(msg)
        await self._on_exit()

    async def _drain_raw(self) -> None:
        """Let output written to fds 1/2 before `done` reach the execution it belongs to."""
        fds = [self._pipe_fd(1), self._pipe_fd(2)]
        for _ in range(1000):
            if all(fd is None or _readable_bytes(fd) == 0 for fd in fds):
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _pipe_fd(self, fd: int) -> int | None:
        if self._transport is None:
            return None
        pipe = self._transport.get_pipe_transport(fd)
        if pipe is None:
            return None
        handle = pipe.get_extra_info("pipe")
        return None if handle is None else int(handle.fileno())

    async def _on_exit(self) -> None:
        if self._protocol is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._protocol.exited), 5)
        code = self._transport.get_returncode() if self._transport is not None else None
        if self.exit_reason is None:
            self.exit_reason = _describe_exit(code)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(KernelStartFailed(self.exit_reason))
        self._finish()

    def _finish(self) -> None:
        self._listener = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def execute(self, code: str, env: dict[str, str], listener: Listener) -> asyncio.Future[None]:
        """Send one request; `listener` gets its messages until the returned future is done.

        The future completes when the kernel says `done` or when the process ends (then
        `alive` is False and `exit_reason` says why).
        """
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._listener = listener
        stdin = self._transport.get_pipe_transport(0)
        if not self.alive or stdin is None or stdin.is_closing():
            self._done.set_result(None)
            return self._done
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write((json.dumps({"code": code, "env": env}) + "\n").encode())
        return self._done

    def interrupt(self) -> None:
        """SIGINT to the kernel's process group (the kernel and what it started)."""
        self._signal(signal.SIGINT)

    def _signal(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def kill(self, reason: str | None = None) -> None:
        """Kill the process group and wait for the pipes to close; repeat-safe."""
        if reason is not None and self.exit_reason is None:
            self.exit_reason = reason
        self._signal(signal.SIGKILL)
        if self._protocol is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._protocol.exited), 5)
        if self._reader_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader_task), 5)
        if self._transport is not None:
            self._transport.close()


def _readable_bytes(fd: int) -> int:
    try:
        got = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", got)[0])


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the kernel closed its message pipe"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the kernel was killed by {name}"
    return f"the kernel exited with status {code}"


def python_argv(python: str, package_dir: str, module: str = "pykernel") -> list[str]:
    """The command line of a kernel written in Python (`module` of this package)."""
    parent, name = os.path.split(os.path.abspath(package_dir))
    # The package is imported from its parent folder, which then leaves sys.path again so
    # that user code sees a clean path (the package stays in sys.modules).
    boot = (
        "import importlib, sys; d = sys.argv.pop(1); sys.path.insert(0, d); "
        f"k = importlib.import_module({name + '.' + module!r}); sys.path.remove(d); k.main()"
    )
    return [python, "-u", "-c", boot, parent, "{fd}"]


def node_argv(node: str, package_dir: str) -> list[str]:
    """The command line of a JavaScript kernel using `node`."""
    return [node, "--expose-internals", os.path.join(package_dir, "jskernel.js"), "{fd}"]


def default_python() -> str:
    return sys.executable
