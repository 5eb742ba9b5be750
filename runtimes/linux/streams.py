"""The pipes between the worker and one sandbox: stdin, capped stdout/stderr, bwrap's status and exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any, Protocol

CHUNK = 1 << 16


async def feed(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    """Write the invocation input to the guest's stdin, then close it (EOF)."""
    if writer is None:
        return
    try:
        if data:
            writer.write(data)
            await writer.drain()
        # No wait_closed(): cancelling it would cancel the protocol's own future (CPython 3.11).
        writer.close()
    except (BrokenPipeError, ConnectionResetError):  # the guest closed stdin or exited
        pass


class Sink(Protocol):
    def write(self, data: bytes) -> object: ...


async def pump(reader: asyncio.StreamReader | None, out: Sink) -> None:
    """Copy a stream into a bounded capture; bytes past the cap are counted and dropped."""
    if reader is None:
        return
    while chunk := await reader.read(CHUNK):
        out.write(chunk)


class StatusReader:
    """bubblewrap's ``--json-status-fd``: one JSON document per line.

    The first carries ``child-pid`` (the sandbox's pid 1 as the host sees it);
    an ``exit-code`` document follows only if the command was actually
    executed, which tells a guest's exit 1 from a setup failure. Read with
    ``add_reader`` on the bare fd, so the fd has one owner on any event loop
    (a uvloop pipe transport closes the fd itself, behind a file object's back).
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._buffer = b""
        self._eof = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._waiter: asyncio.Future[None] | None = None
        self.documents: list[dict[str, Any]] = []

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            *lines, self._buffer = (self._buffer + data).split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict):
                        self.documents.append(doc)
        else:
            self._eof = True
            self._stop_reading()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self) -> None:
        assert self._loop is not None, "start() first"
        self._waiter = self._loop.create_future()
        await self._waiter

    async def child_pid(self) -> int | None:
        while True:
            for doc in self.documents:
                if isinstance(pid := doc.get("child-pid"), int):
                    return pid
            if self._eof:
                return None
            await self._more()

    async def exit_code(self) -> int | None:
        """Read to the end (the monitor has exited); the command's exit status, if it ran."""
        while not self._eof:
            await self._more()
        for doc in self.documents:
            if isinstance(code := doc.get("exit-code"), int):
                return code
        return None

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._reading = False

    def close(self) -> None:
        if self._fd < 0:
            return
        self._stop_reading()
        os.close(self._fd)
        self._fd = -1


async def setup_failure(proc: asyncio.subprocess.Process, grace: float) -> str:
    """bwrap's complaint when it gave up before the sandbox existed."""
    err = b""
    if proc.stderr is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                err = await proc.stderr.read()
    return err.decode(errors="replace").strip() or f"bwrap exited with status {proc.returncode}"
