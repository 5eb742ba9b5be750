"""The server as a sandbox runs it: `python3 -S -m interpreter`, standard library only."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx

import soulbox.runtimes.linux.interpreter as package


def test_runs_as_a_top_level_package_without_site_packages(tmp_path: Path) -> None:
    mount = tmp_path / "opt-soulbox"
    mount.mkdir()
    (mount / "interpreter").symlink_to(Path(package.__file__).parent)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(mount), "HOME": str(tmp_path)}
    # -S: no site-packages at all, so any third-party import would fail here
    argv = ["/usr/bin/python3", "-S", "-m", "interpreter", "--host", "127.0.0.1", "--port", str(port),
            "--python", "/usr/bin/python3", "--cwd", "/no/such/home"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "interpreter ready"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            context = client.post("/contexts", json={}).json()
            assert context["language"] == "python"
            assert context["cwd"] == str(tmp_path)  # /no/such/home fell back to $HOME
            lines = client.post("/execute", json={"code": "import sys\nsys.version_info[:2]"}).text.splitlines()
            assert '"text": "(3, 11)"' in lines[-2]
            assert lines[-1] == '{"type": "end_of_execution"}'
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
