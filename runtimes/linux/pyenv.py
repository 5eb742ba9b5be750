"""Python environments for sandboxes, built once on the host with uv and cached.

An environment is a virtual environment of the host's system Python (`/usr/bin/python3`
by default, never a uv-managed or the project's own Python): its `bin/python` points into
`/usr`, which sandboxes share with the host, and its packages are copied in (not linked to
the uv cache) with their bytecode compiled, so it works bind-mounted read-only at the same
path inside a sandbox.

Each environment lives under `root` in a folder named by a hash of the Python's version
and the sorted package list. It is built in a temporary folder and renamed into place;
a lock file (fcntl) per hash makes concurrent builders, in one process or several, wait
for the first one instead of building twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import uv

from soulbox.core.errors import SoulboxError

# The "code-interpreter" template's packages: minor versions with wheels for Python 3.11.
DATA_SCIENCE_PACKAGES = ("numpy==2.4.*", "pandas==3.1.*", "matplotlib==3.11.*")

# Bumped when the layout of an environment changes, so that old ones are not reused.
_FORMAT = "1"


class PythonEnvFailed(SoulboxError):
    """uv could not create the environment or install its packages."""

    code = "python_env_failed"


async def ensure_python_env(root: Path, packages: Sequence[str], *, python: str = "/usr/bin/python3") -> Path:
    """The folder of a virtual environment of `python` with `packages`, built if needed."""
    version = await _run([python, "-c", "import platform, sys; print(sys.version, platform.machine())"])
    key = _key(python, version, packages)
    target = root / f"py-{key}"
    if _exists(target, root):
        return target
    async with _locked(root / f".py-{key}.lock"):
        if _exists(target, root):
            return target
        build = await asyncio.to_thread(_fresh_build_dir, root, key)
        try:
            await _build(build, python, packages)
            os.rename(build, target)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, build, True)
            raise
    return target


def _exists(target: Path, root: Path) -> bool:
    root.mkdir(parents=True, exist_ok=True)
    return target.is_dir()


def _fresh_build_dir(root: Path, key: str) -> Path:
    for stale in root.glob(f".py-{key}.build-*"):  # left by a builder that died
        shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix=f".py-{key}.build-", dir=root))
    build.chmod(0o755)  # mkdtemp's 0700 would lock out a sandbox's unprivileged user
    return build


async def _build(env: Path, python: str, packages: Sequence[str]) -> None:
    uv_bin = uv.find_uv_bin()
    await _run(
        [
            uv_bin, "venv", str(env), "--python", python, "--no-managed-python", "--no-python-downloads",
            "--relocatable", "--allow-existing", "--quiet",
        ]
    )  # fmt: skip
    if packages:
        await _run(
            [
                uv_bin, "pip", "install", "--python", str(env / "bin" / "python"), "--link-mode", "copy",
                "--compile-bytecode", "--no-managed-python", "--no-python-downloads", "--quiet", *packages,
            ]
        )  # fmt: skip


def _key(python: str, version: str, packages: Sequence[str]) -> str:
    text = "\n".join([_FORMAT, os.path.realpath(python), version.strip(), *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def _run(argv: list[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise PythonEnvFailed(f"{argv[0]}: {exc}") from exc
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()[-2000:]
        raise PythonEnvFailed(f"{Path(argv[0]).name} {argv[1]} failed ({proc.returncode}): {detail}")
    return out.decode(errors="replace")


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    # Polled with LOCK_NB so that a cancelled waiter leaves no thread blocked in flock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock
