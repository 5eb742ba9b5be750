"""envd inside a bubblewrap sandbox as the host will run it: pid 1, unprivileged, package bind-mounted at
/opt/soulbox/envd, the unix socket in a bind-mounted directory, system python3 and nothing else."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b.sandbox.commands.command_handle import PtySize

import soulbox.runtimes.linux.envd as envd_package

from .conftest import SYSTEM_PYTHON, Envd


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def tcp_to_unix(path: str) -> Iterator[int]:
    """A TCP port relaying to the unix socket, standing in for the host worker's proxy."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(path)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield port
    finally:
        listener.close()


def test_envd_in_bubblewrap_over_a_unix_socket(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    sockets = tmp_path / "sock"
    sockets.mkdir()
    command = [
        "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--tmpfs",
        "/home",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/opt",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--bind",
        str(sockets),
        "/run/envd",
        "--ro-bind",
        str(Path(envd_package.__file__).parent),
        "/opt/soulbox/envd",
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--die-with-parent",
        "--as-pid-1",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "PYTHONPATH",
        "/opt/soulbox",
        "--chdir",
        "/",
        SYSTEM_PYTHON,
        "-m",
        "envd",
        "--socket",
        "/run/envd/envd.sock",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"envd ready\n"
        with tcp_to_unix(str(sockets / "envd.sock")) as port:
            sandbox = Envd(f"http://127.0.0.1:{port}", Path("/home/user"), process).sandbox()
            result = sandbox.commands.run("id -u; echo $PPID; pwd")
            assert result.stdout.split() == ["1000", "1", "/home/user"]
            sandbox.files.write("inside.txt", "sandboxed")
            assert sandbox.commands.run("cat /home/user/inside.txt").stdout == "sandboxed"
            terminal = sandbox.pty.create(PtySize(rows=33, cols=99))
            sandbox.pty.send_stdin(terminal.pid, b"stty size; exit\n")
            seen = b"".join(pty for _, _, pty in terminal if pty is not None)
            assert b"33 99" in seen
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
