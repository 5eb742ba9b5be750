"""Deploy-time dependencies: a JS/TS function with npm dependencies becomes one bundled ES module.

A deploy whose ``package_json`` lists ``dependencies`` is built before it is
stored: ``bun install --ignore-scripts --production`` fetches the packages from
the registry (``js.npm_registry``; no package's lifecycle script runs), then
esbuild bundles the entry module and everything it imports into one ES module.
That bundle is the function's artifact, so nothing is resolved or fetched when
it is invoked, and every worker runs exactly what was built.

Both steps run in a bubblewrap sandbox as ``nobody`` that sees the build
directory, the package cache and the two binaries, nothing else of the host:
a dependency spec or an ``import`` naming a host path finds nothing to read.
Only the install step has network. Dependency specs are registry versions,
ranges, tags or ``npm:`` aliases; ``file:``, ``link:``, git and URL specs are
refused, and the package.json is rewritten to its ``dependencies`` alone
(scripts, overrides, workspaces and the like are dropped).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.errors import InvalidRequest
from soulbox.core.tiersettings import JsSettings

from ..linux.seccomp import build_filter
from ..linux.wrap import seccomp_pipe
from .engines import TOOLS_DIRS, find_binary
from .source import SourceError

NOBODY = 65534
PACKAGE_NAME_RE = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$")
# A registry version, range or tag: digits, letters, spaces and the range operators; no ':' or '/'.
VERSION_RE = re.compile(r"^[A-Za-z0-9 .*^~<>=|+_-]{1,100}$")
ENTRY_SUFFIXES = (".ts", ".mts", ".cts", ".tsx", ".js", ".mjs", ".cjs", ".jsx")
_OUTPUT_CAP = 64 * 1024  # of a failing step's output, quoted in the error
_ENTRY_LOCATION = re.compile(r"^\s*entry\.\w+:(\d+):(\d+):", re.MULTILINE)  # esbuild: line 1-based, column 0-based


class BuildFailed(InvalidRequest):
    """The dependencies could not be installed or the bundle could not be built: the deploy is refused."""

    code = "build_failed"


@dataclass(frozen=True, slots=True)
class Bundle:
    module: bytes
    packages: dict[str, str]  # every installed package -> its version, as resolved at deploy


def dependencies_of(package_json: str | None) -> dict[str, str]:
    """The ``dependencies`` of a package.json text (empty: nothing to build); bad specs are a 400."""
    if not package_json:
        return {}
    try:
        manifest = json.loads(package_json)
    except ValueError:
        raise InvalidRequest("package_json is not JSON") from None
    deps = manifest.get("dependencies") if isinstance(manifest, dict) else None
    if deps is None:
        return {}
    if not isinstance(deps, dict):
        raise InvalidRequest("package_json `dependencies` must be an object of package name -> version")
    for name, spec in deps.items():
        if not isinstance(name, str) or not PACKAGE_NAME_RE.match(name):
            raise InvalidRequest(f"package_json: bad package name {name!r}")
        if not isinstance(spec, str) or not _registry_spec(spec):
            raise InvalidRequest(
                f"package_json: dependency {name!r} must be a registry version, range, tag or npm: alias, "
                f"not {spec!r} (file:, link:, git and URL dependencies are not installed)"
            )
    return dict(deps)


def _registry_spec(spec: str) -> bool:
    if spec.startswith("npm:"):
        name, at, version = spec[4:].rpartition("@")
        return bool(at and PACKAGE_NAME_RE.match(name) and VERSION_RE.match(version))
    return bool(VERSION_RE.match(spec))


class Bundler:
    """Builds bundles in a sandbox; one per gateway (deploys are validated there)."""

    def __init__(self, settings: JsSettings, *, bun: Path, esbuild: Path, bwrap: str, setpriv: str) -> None:
        self._settings = settings
        self._dir = settings.build_dir
        self._bun = bun.resolve()
        self._esbuild = esbuild.resolve()
        self._bwrap = bwrap
        self._setpriv = setpriv
        self._seccomp = build_filter()
        self._builds = asyncio.Semaphore(settings.max_concurrent_builds)

    @classmethod
    def find(cls, settings: JsSettings) -> Bundler | str:
        """A bundler, or why there is none (a deploy with dependencies is then refused with that reason)."""
        bun = settings.bun_path or find_binary("bun", extra_dirs=TOOLS_DIRS)
        esbuild = find_binary("esbuild", extra_dirs=TOOLS_DIRS)
        bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
        if bun is None or esbuild is None:
            return "dependency builds need bun and esbuild (installed into .tools/js by ./justw)"
        if bwrap is None or setpriv is None or os.geteuid() != 0:
            return "dependency builds run sandboxed: they need bubblewrap and setpriv, as root"
        return cls(settings, bun=bun, esbuild=esbuild, bwrap=bwrap, setpriv=setpriv)

    async def build(self, source: bytes, filename: str | None, deps: dict[str, str], *, max_bytes: int) -> Bundle:
        """Install ``deps`` and bundle ``source`` (named ``filename``, for its loader) with them."""
        suffix = next((s for s in ENTRY_SUFFIXES if (filename or "").lower().endswith(s)), ".ts")
        async with self._builds:
            cache = self._dir / "cache"
            await asyncio.to_thread(_make_dir, cache)
            work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="build-", dir=self._dir))
            try:
                await asyncio.to_thread(_prepare, work, source, suffix, deps)
                install = [str(self._bun), "install", "--ignore-scripts", "--production", "--no-progress",
                           "--cache-dir=/cache", f"--registry={self._settings.npm_registry}"]  # fmt: skip
                await self._run("npm install", install, work, cache, net=True)
                bundle = [str(self._esbuild), f"/build/entry{suffix}", "--bundle", "--format=esm", "--platform=node",
                          "--target=esnext", "--log-level=error", "--color=false", "--outfile=/build/out/bundle.mjs",
                          "--external:bun:*", "--external:node:*"]  # fmt: skip
                await self._run("bundle", bundle, work, cache, net=False)
                return await asyncio.to_thread(_collect, work, max_bytes)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)

    async def _run(self, step: str, command: Sequence[str], work: Path, cache: Path, *, net: bool) -> None:
        seccomp = seccomp_pipe(self._seccomp)
        argv = [
            self._setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
            self._bwrap, "--unshare-all", *(["--share-net"] if net else []), "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf", "--ro-bind-try", "/etc/ssl", "/etc/ssl",
            "--ro-bind-try", "/etc/ca-certificates", "/etc/ca-certificates",
            "--ro-bind", str(self._bun), str(self._bun), "--ro-bind", str(self._esbuild), str(self._esbuild),
            "--bind", str(work), "/build", "--bind", str(cache), "/cache",
            "--setenv", "HOME", "/build", "--setenv", "NO_COLOR", "1", "--setenv", "PATH", "/usr/bin:/bin",
            "--chdir", "/build",
            "--seccomp", str(seccomp), "--", *command,
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(seccomp,),
                env={"PATH": "/usr/bin:/bin"},
            )
        finally:
            os.close(seccomp)
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), self._settings.build_timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BuildFailed(f"{step} took longer than {self._settings.build_timeout_s:g} s") from None
        if proc.returncode != 0:
            text = output[-_OUTPUT_CAP:].decode(errors="replace").replace("/build/", "").strip()
            where = _ENTRY_LOCATION.search(text)
            if step == "bundle" and where is not None:  # an error in the function's own code: say where
                first = text.splitlines()[0].removeprefix("✘ [ERROR]").strip()
                raise SourceError(first, line=int(where[1]), column=int(where[2]) + 1, problem="cannot bundle")
            raise BuildFailed(f"{step} failed (exit {proc.returncode}): {text}")


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)


def _prepare(work: Path, source: bytes, suffix: str, deps: dict[str, str]) -> None:
    manifest = {"name": "soulbox-function", "private": True, "dependencies": deps}
    (work / "package.json").write_text(json.dumps(manifest))
    (work / f"entry{suffix}").write_bytes(source)
    (work / "out").mkdir()
    for path in (work, work / "out", work / "package.json", work / f"entry{suffix}"):
        os.chown(path, NOBODY, NOBODY)


def _collect(work: Path, max_bytes: int) -> Bundle:
    out = work / "out" / "bundle.mjs"
    if out.stat().st_size > max_bytes:
        raise BuildFailed(f"the bundle is larger than the {max_bytes} byte module limit")
    return Bundle(out.read_bytes(), _installed(work / "node_modules"))


def _installed(node_modules: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for manifest in (*node_modules.glob("*/package.json"), *node_modules.glob("@*/*/package.json")):
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and isinstance(meta.get("version"), str):
            found[meta["name"]] = meta["version"]
    return dict(sorted(found.items()))
