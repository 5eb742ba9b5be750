"""How each JS runtime is launched: command lines, environment, permissions.

Deno runs with its permission system closed: no file, network, env or
subprocess access beyond what :class:`~.config.Permissions` grants, plus
read of the function's own module and the shim's control socket (a unix
socket the host unlinks as soon as the shim is connected).

Bun has no permission system. A Bun function can read and write whatever
its process can, open any connection and start programs; it is only as
isolated as the process it runs in, which is why the tier runs every
process in a bubblewrap sandbox (:mod:`.sandbox`). The flags below only
turn off what Bun would do on its own: install packages, load ``.env``
files, native addons, macros.

Paths given to ``launch`` are as the process sees them (inside the sandbox
when there is one).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from soulbox.core.schemas import Runtime

from .config import BUN, DENO, FunctionConfig, Mode

SHIM = Path(__file__).with_name("shim.mjs")


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str]


class Engine(Protocol):
    """A JS runtime binary and how to start the shim in it."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def binary(self) -> Path: ...

    def launch(
        self,
        *,
        socket: Path,
        module: Path,
        mode: Mode,
        config: FunctionConfig,
        memory_mb: int,
        cache_dir: Path,
        shim: Path = SHIM,
    ) -> Launch: ...

    def version(self) -> str: ...


def _base_env(config: FunctionConfig, home: Path) -> dict[str, str]:
    return {**config.env, "HOME": str(home), "TMPDIR": str(home), "NO_COLOR": "1"}


@dataclass(frozen=True, slots=True)
class BunEngine:
    binary: Path
    smol: bool = True
    """``--smol``: collect garbage more often, so the RSS limit measures live memory."""
    runtime: Runtime = BUN

    def launch(
        self,
        *,
        socket: Path,
        module: Path,
        mode: Mode,
        config: FunctionConfig,
        memory_mb: int,
        cache_dir: Path,
        shim: Path = SHIM,
    ) -> Launch:
        flags = ["--no-install", "--no-env-file", "--no-addons", "--no-macros", "--no-orphans"]
        if self.smol:
            flags.append("--smol")
        env = _base_env(config, socket.parent)
        env["BUN_RUNTIME_TRANSPILER_CACHE_PATH"] = str(cache_dir)
        return Launch([str(self.binary), *flags, str(shim), str(socket), str(module), mode.value], env)

    def version(self) -> str:
        return _version([str(self.binary), "--version"])


@dataclass(frozen=True, slots=True)
class DenoEngine:
    binary: Path
    runtime: Runtime = DENO

    def launch(
        self,
        *,
        socket: Path,
        module: Path,
        mode: Mode,
        config: FunctionConfig,
        memory_mb: int,
        cache_dir: Path,
        shim: Path = SHIM,
    ) -> Launch:
        grants = config.permissions
        allow: dict[str, list[str]] = {
            "read": [str(socket), str(module), *grants.read],
            "write": [str(socket), *grants.write],
            "net": [f"unix:{socket}", *grants.net],
            "env": sorted(config.env),
            "run": list(grants.run),
        }
        flags = ["run", "--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock", "--no-check"]
        flags.append(f"--v8-flags=--max-old-space-size={memory_mb}")
        flags += [f"--allow-{kind}={','.join(items)}" for kind, items in allow.items() if items]
        env = _base_env(config, socket.parent)
        env["DENO_DIR"] = str(cache_dir)
        return Launch([str(self.binary), *flags, str(shim), str(socket), str(module), mode.value], env)

    def version(self) -> str:
        return _version([str(self.binary), "--version"]).split("\n", 1)[0]


def _version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


# Where the project setup installs Bun: `npm install --prefix .tools/js bun` beside .venv. The
# package's install script links the binary into .bin; without it, it stays in the platform package.
_NODE_MODULES = Path(sys.prefix).parent / ".tools" / "js" / "node_modules"
_ARCH = {"x86_64": "x64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
TOOLS_DIRS = (_NODE_MODULES / ".bin", _NODE_MODULES / "@oven" / f"bun-linux-{_ARCH}" / "bin")


def find_binary(name: str, *, extra_dirs: tuple[Path, ...] = ()) -> Path | None:
    """``name`` on PATH, beside this interpreter (the venv, where PyPI's ``deno`` lands) or in ``extra_dirs``."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for directory in (Path(sys.executable).parent, *extra_dirs):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def default_engines(
    *, bun: Path | None = None, deno: Path | None = None, extra_dirs: tuple[Path, ...] = ()
) -> Mapping[Runtime, Engine]:
    """The engines whose binary is given or can be found; a missing runtime is left out."""
    engines: dict[Runtime, Engine] = {}
    bun = bun or find_binary("bun", extra_dirs=extra_dirs)
    if bun is not None:
        engines[BUN] = BunEngine(bun)
    deno = deno or find_binary("deno", extra_dirs=extra_dirs)
    if deno is not None:
        engines[DENO] = DenoEngine(deno)
    return engines
