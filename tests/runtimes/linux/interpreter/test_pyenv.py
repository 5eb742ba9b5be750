"""Python environments built with uv: cached, shared by concurrent builders, usable read-only."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from soulbox.runtimes.linux.pyenv import PythonEnvFailed, ensure_python_env


async def test_concurrent_builders_share_one_env(tmp_path: Path) -> None:
    other_process = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from soulbox.runtimes.linux.pyenv import ensure_python_env\n"
        "print(asyncio.run(ensure_python_env(Path(sys.argv[1]), [])))",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    here = await asyncio.gather(ensure_python_env(tmp_path, []), ensure_python_env(tmp_path, []))
    out, _ = await other_process.communicate()
    assert other_process.returncode == 0
    assert here[0] == here[1] == Path(out.decode().strip())
    assert _listing(tmp_path) == [here[0].name]  # one env, no build folder left behind
    mode, python = _inspect(here[0])
    assert mode == 0o755
    assert python.startswith("/usr/")
    assert await ensure_python_env(tmp_path, []) == here[0]


async def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(PythonEnvFailed):
        await ensure_python_env(tmp_path, ["soulbox-no-such-package-anywhere==0.0.0"])
    assert _listing(tmp_path) == []


def _listing(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if not p.name.endswith(".lock")]


def _inspect(env: Path) -> tuple[int, str]:
    """The env folder's mode and where its python really is."""
    return env.stat().st_mode & 0o777, os.path.realpath(env / "bin" / "python")


def test_data_science_env_works_read_only_with_only_usr(data_science_env: Path, tmp_path: Path) -> None:
    """The sandbox's view: an unprivileged user, the host's /usr, the env read-only, nothing else."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap is not installed")
    env = str(data_science_env)
    argv = [bwrap, "--unshare-all", "--uid", "1000", "--gid", "1000", "--die-with-parent",
            "--ro-bind", "/usr", "/usr", "--tmpfs", "/tmp", "--ro-bind", env, env,
            "--proc", "/proc", "--dev", "/dev"]  # fmt: skip
    for name in ("lib", "lib64", "bin"):
        if os.path.islink(f"/{name}"):
            argv += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
    code = "import numpy, pandas, matplotlib; print(pandas.DataFrame({'a': [numpy.int64(1)]}).shape)"
    done = subprocess.run([*argv, f"{env}/bin/python", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 1)"
