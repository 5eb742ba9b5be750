"""Sandbox templates: what a sandbox runs and sees besides the shared root.

``base`` is a box with the in-sandbox daemon (envd) only; ``code-interpreter-v1``
(the name the ``e2b-code-interpreter`` SDK asks for) adds the code-interpreter
server on port 49999 and a Python environment with numpy, pandas and
matplotlib, built once per worker host (:mod:`soulbox.runtimes.linux.pyenv`)
and bound read-only. SoulBox's in-sandbox programs are stdlib-only packages
bound read-only under ``/opt/soulbox`` and run by the system ``python3``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shlex
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from soulbox.core.errors import NotFound, Unavailable
from soulbox.core.settings import Settings

from ..linux.box import RUN_DIR, SOCKET_NAME
from ..linux.pyenv import DATA_SCIENCE_PACKAGES, ensure_python_env

GUEST_ROOT = "/opt/soulbox"
HOME = "/home/user"
ENVD_READY = b"envd ready"
INTERPRETER_READY = b"interpreter ready"
INTERPRETER_PORT = 49999
FALLBACK_TEMPLATES = Path("/var/tmp/soulbox/templates")
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": HOME,
    "USER": "user",
    "LANG": "C.UTF-8",
    "TERM": "xterm-256color",
    "PYTHONPATH": GUEST_ROOT,
}


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    command: list[str]  # the box's pid-1 command (envd, plus the template's servers)
    ready: tuple[bytes, ...]  # every marker the command prints once serving
    ro_binds: dict[str, str] = field(default_factory=dict)  # host path -> sandbox path
    env: dict[str, str] = field(default_factory=dict)


def _package_dir(name: str) -> str:
    """Where a guest package's sources are, found without importing it into the worker."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"the guest package {name} is not installed")
    return str(spec.submodule_search_locations[0])


class Templates:
    """The templates this worker can start; environments are built on first use."""

    NAMES = ("base", "code-interpreter-v1")

    def __init__(self, settings: Settings, guest_root: Path) -> None:
        """``guest_root``: a host directory every sandbox uid can reach, for the in-sandbox programs."""
        self._settings = settings
        self._python = settings.linux.python
        self._guests = guest_root
        self._built: dict[str, Template] = {}
        self._lock = asyncio.Lock()

    async def _guest(self, name: str) -> str:
        """A copy of a guest package where sandboxes can read it (the source tree may be private, e.g. in /root).

        Its bytecode is compiled here, by the sandboxes' own interpreter: they see the copy read-only, and
        compiling every module at each start cost a cold sandbox ~40 ms and its daemon ~4 MB.
        """
        target = self._guests / name.rsplit(".", 1)[-1]
        if not target.exists():
            shutil.copytree(_package_dir(name), target, ignore=shutil.ignore_patterns("__pycache__"))
        if not (target / "__pycache__").exists():
            proc = await asyncio.create_subprocess_exec(
                self._python, "-m", "compileall", "-q", str(target), stdout=asyncio.subprocess.DEVNULL
            )
            await proc.wait()
        for path in (target, *target.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return str(target)

    def _templates_root(self) -> Path:
        configured = self._settings.sandboxes.templates_dir
        root = (configured or self._settings.data_dir / "templates").resolve()
        if configured is None and not _traversable(root):
            root = FALLBACK_TEMPLATES  # the data dir is private: a shared spot instead (sticky, world-traversable)
        if not _traversable(root):
            raise Unavailable(
                f"{root} is not traversable by other users, so sandboxes cannot see the templates in it; "
                "set sandboxes.templates_dir (SOULBOX_SANDBOXES__TEMPLATES_DIR) to a path they can reach"
            )
        return root

    async def get(self, name: str) -> Template:
        if name not in self.NAMES:
            raise NotFound(
                f"template {name!r} does not exist (known: {', '.join(self.NAMES)})", code="template_not_found"
            )
        async with self._lock:
            if name not in self._built:
                self._built[name] = await self._build(name)
            return self._built[name]

    async def _build(self, name: str) -> Template:
        binds = {await self._guest("soulbox.runtimes.linux.envd"): f"{GUEST_ROOT}/envd"}
        # -S: envd is stdlib-only, and site's scan of the host's package directories costs every start ~4 ms.
        envd_cmd = [self._python, "-S", "-m", "envd", "--socket", f"{RUN_DIR}/{SOCKET_NAME}"]
        if name == "base":
            return Template(name, envd_cmd, (ENVD_READY,), binds, dict(BASE_ENV))
        root = self._templates_root()
        env_dir = await ensure_python_env(root / "pyenv", DATA_SCIENCE_PACKAGES, python=self._python)
        binds[await self._guest("soulbox.runtimes.linux.interpreter")] = f"{GUEST_ROOT}/interpreter"
        binds[str(env_dir)] = str(env_dir)
        server = [
            self._python, "-m", "interpreter", "--port", str(INTERPRETER_PORT),
            "--python", str(env_dir / "bin" / "python"), "--cwd", HOME,
        ]  # fmt: skip
        # One pid-1 command: the server in the background, then envd in the shell's place (it reaps both).
        script = f"{shlex.join(server)} & exec {shlex.join(envd_cmd)}"
        env = dict(BASE_ENV, PATH=f"{env_dir / 'bin'}:{BASE_ENV['PATH']}", VIRTUAL_ENV=str(env_dir))
        return Template(name, ["/bin/sh", "-c", script], (ENVD_READY, INTERPRETER_READY), binds, env)


def _traversable(path: Path) -> bool:
    """Sandboxes run as unprivileged uids: bubblewrap can bind only what they can reach."""
    path.mkdir(parents=True, exist_ok=True)
    return all(part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents))
