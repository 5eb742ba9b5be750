"""envd as the sandbox runs it: `/usr/bin/python3 -m envd` with only the package on PYTHONPATH (stdlib only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2b import Sandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

import soulbox.runtimes.linux.envd as envd_package

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
ENVD_VERSION = Version("0.6.4")


@dataclass
class Envd:
    """A running envd and how to reach it."""

    url: str
    home: Path
    process: subprocess.Popen[bytes]
    token: str | None = None
    socket_path: str | None = None

    def sandbox(self, token: str | None = None) -> Sandbox:
        """The official SDK's Sandbox object pointed straight at this envd (no control plane)."""
        headers = {"E2b-Sandbox-Id": "test", "E2b-Sandbox-Port": "49983"}
        if token is not None:
            headers["X-Access-Token"] = token
        config = ConnectionConfig(sandbox_url=self.url, extra_sandbox_headers=headers)
        return Sandbox(
            sandbox_id="test",
            sandbox_domain=None,
            envd_version=ENVD_VERSION,
            envd_access_token=token,
            connection_config=config,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_envd(
    tmp: Path, *args: str, env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start envd and wait for its ready line."""
    pythonpath = tmp / "pythonpath"
    pythonpath.mkdir(exist_ok=True)
    link = pythonpath / "envd"
    if not link.exists():
        link.symlink_to(Path(envd_package.__file__).parent)
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(pythonpath), **(env or {})}
    process = subprocess.Popen(
        [*wrapper, SYSTEM_PYTHON, "-m", "envd", *args],
        stdout=subprocess.PIPE,
        env=full_env,
        cwd=tmp,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == b"envd ready\n", line
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture
def envd(tmp_path: Path) -> Iterator[Envd]:
    """envd on a free TCP port, default env from an --env-file, home in tmp_path."""
    home = tmp_path / "home"
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"SOULBOX_DEFAULT": "from-env-file"}))
    port = free_port()
    process = start_envd(
        tmp_path,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--env-file",
        str(env_file),
        "--home",
        str(home),
    )
    try:
        yield Envd(f"http://127.0.0.1:{port}", home, process)
    finally:
        stop(process)


@pytest.fixture
def sandbox(envd: Envd) -> Sandbox:
    """The SDK's Sandbox against `envd`."""
    return envd.sandbox()
