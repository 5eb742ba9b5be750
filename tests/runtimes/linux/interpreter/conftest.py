"""A real interpreter server with the data-science environment, driven by the real SDK.

The environment is built once and kept under /tmp (or $SOULBOX_TEST_CACHE), so only the
first run downloads wheels; the server runs as a subprocess on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import ConnectionConfig
from e2b_code_interpreter import Sandbox
from packaging.version import Version

from soulbox.runtimes.linux.pyenv import DATA_SCIENCE_PACKAGES, ensure_python_env

CACHE = Path(os.environ.get("SOULBOX_TEST_CACHE", "/tmp/soulbox-test-cache"))
MAX_OUTPUT_BYTES = 1024 * 1024


@pytest.fixture(scope="session")
def data_science_env() -> Path:
    return asyncio.run(ensure_python_env(CACHE / "pyenv", DATA_SCIENCE_PACKAGES))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[str], cwd: Path) -> None:
        self.url = url
        self.proc = proc
        self.cwd = cwd

    def sandbox(self) -> Sandbox:
        """The official SDK's Sandbox, pointed straight at this server (no control plane)."""
        config = ConnectionConfig(sandbox_url=self.url, api_key="e2b_test")
        return Sandbox(
            sandbox_id="sbx-test",
            envd_version=Version("0.5.0"),
            envd_access_token=None,
            sandbox_domain=None,
            connection_config=config,
        )


@pytest.fixture(scope="module")
def server(data_science_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("home")
    port = _free_port()
    argv = [
        sys.executable, "-m", "soulbox.runtimes.linux.interpreter", "--host", "127.0.0.1", "--port", str(port),
        "--python", str(data_science_env / "bin" / "python"), "--cwd", str(cwd),
        "--max-output-bytes", str(MAX_OUTPUT_BYTES), "--interrupt-grace", "2",
    ]  # fmt: skip
    node = shutil.which("node")
    if node:
        argv += ["--node", node]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "interpreter ready", line
    try:
        yield Server(f"http://127.0.0.1:{port}", proc, cwd)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def sbx(server: Server) -> Sandbox:
    return server.sandbox()


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed")
    return path
