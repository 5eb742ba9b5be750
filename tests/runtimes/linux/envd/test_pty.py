"""PTY sessions through the official e2b SDK's Pty object."""

from __future__ import annotations

import time

from e2b import Sandbox
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox_sync.commands.command_handle import CommandHandle


def _read_until(handle: CommandHandle, needle: bytes, seconds: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    for _, _, pty in handle:
        if pty is not None:
            seen += pty
        if needle in seen or time.monotonic() > deadline:
            break
    return seen


def test_pty_write_resize_and_kill(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; echo SIZE-$((6*7))\n")
    assert b"24 80" in _read_until(terminal, b"SIZE-42")
    sandbox.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; tty; echo AFTER-$((6*7))\n")
    out = _read_until(terminal, b"AFTER-42")
    assert b"30 100" in out
    assert b"/dev/pts/" in out  # the shell has the PTY as its terminal
    assert sandbox.pty.kill(terminal.pid)
    assert terminal.pid not in [p.pid for p in _wait_gone(sandbox, terminal.pid)]


def _wait_gone(sandbox: Sandbox, pid: int) -> list:  # type: ignore[type-arg]
    for _ in range(100):
        listed = sandbox.commands.list()
        if pid not in [p.pid for p in listed]:
            return listed
        time.sleep(0.05)
    return sandbox.commands.list()


def test_pty_exit_ends_the_stream_with_the_code(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.stream_input(terminal.pid, ["echo bye\n", "exit 7\n"])
    try:
        terminal.wait()
    except Exception as e:
        assert getattr(e, "exit_code", None) == 7
    else:
        raise AssertionError("a non-zero exit raises")
