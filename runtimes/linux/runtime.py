"""The Linux tier's :class:`~soulbox.runtimes.protocol.Runtime`: scripts in namespace sandboxes.

A ``python`` function is a script run by the host's python3, a ``shell``
function a bash script, a ``node`` function a JavaScript file run by node —
each in a fresh sandbox (:mod:`.sandbox`) with the invocation input on stdin,
the function's memory limit on its cgroup and its deadline on the wall clock.
No network unless the function's ``permissions.net`` grants destinations
(:mod:`.netgrants`): then egress to those only, through :mod:`.netpool`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from soulbox.core import tracing
from soulbox.core.schemas import FunctionSpec, InvocationError, Outcome, Tier
from soulbox.core.settings import Settings
from soulbox.core.tiersettings import LinuxSettings

from ..protocol import OutputSink, RunResult
from . import names
from .artifacts import ArtifactCache, FetchArtifact
from .errors import SandboxUnavailable, UnsupportedRuntime
from .netgrants import resolve_grants
from .rootfs import CODE_DIR
from .sandbox import Launcher, SandboxLimits, SandboxResult

MIB = 1024 * 1024
GUEST_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",  # print() reaches a streamed invocation as it happens, as on other FaaS
}


class LinuxRuntime:
    tier: Tier = names.LINUX

    def __init__(
        self,
        fetch_artifact: FetchArtifact,
        *,
        cache_dir: Path,
        concurrency: int,
        settings: LinuxSettings | None = None,
        box_capacity: int = 0,
    ) -> None:
        self.settings = settings or LinuxSettings()
        self.launcher = Launcher(self.settings, concurrency=concurrency, box_capacity=box_capacity)
        self.artifacts = ArtifactCache(fetch_artifact, cache_dir)
        interpreters = {
            str(names.PYTHON): (self.settings.python, "main.py"),
            str(names.SHELL): (self.settings.shell, "main.sh"),
            str(names.NODE): (self.settings.node, "main.js"),
        }
        self._commands = {rt: (path, f"{CODE_DIR}/{file}") for rt, (path, file) in interpreters.items()}
        self.available: frozenset[str] = frozenset(
            rt for rt, (path, _) in interpreters.items() if os.access(path, os.X_OK)
        )
        self._closed = False

    async def run(self, spec: FunctionSpec, input: bytes) -> RunResult:
        return await self.run_streaming(spec, input, None)

    async def run_streaming(self, spec: FunctionSpec, input: bytes, sink: OutputSink | None) -> RunResult:
        """``run``, handing stdout and stderr to ``sink`` as the pipes deliver them."""
        runtime = str(spec.runtime)
        command = self._commands.get(runtime)
        if command is None:
            raise UnsupportedRuntime(runtime)
        if runtime not in self.available:
            raise SandboxUnavailable(f"{command[0]} is not installed on this worker")
        interpreter, code = command
        tracing.set_attribute("soulbox.cold_start", True)  # a new sandbox for every run
        path = await self.artifacts.path(spec.artifact)
        limits = spec.limits
        grant = await resolve_grants(spec.permissions.net) if spec.permissions.net else None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        files = {code: fd}
        if grant is not None and grant.hosts:  # the granted names, for a sandbox without DNS
            files["/etc/hosts"] = data_fd(grant.hosts_file(self.settings.hostname))
        try:
            result = await self.launcher.run(
                [interpreter, code],
                stdin=input,
                limits=SandboxLimits(
                    memory_bytes=limits.memory_mb * MIB,
                    timeout_s=limits.timeout_ms / 1000,
                    max_output_bytes=limits.max_output_bytes,
                    tmpfs_bytes=self.settings.tmpfs_mb * MIB if self.settings.tmpfs_mb else None,
                ),
                env={**GUEST_ENV, **spec.env},  # the function's bindings (and opened secrets)
                files=files,
                sink=sink,
                egress=grant.policy if grant is not None else None,
            )
        finally:
            for opened in files.values():
                os.close(opened)
        return to_run_result(result, spec)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.launcher.close()


def data_fd(data: bytes) -> int:
    """A memory file holding ``data``, at offset 0 (for ``--ro-bind-data``)."""
    fd = os.memfd_create("soulbox-data", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def to_run_result(result: SandboxResult, spec: FunctionSpec) -> RunResult:
    """Classify a finished sandbox: timeout, then OOM, then the exit status."""
    code = result.exit_code
    error = None
    if result.timed_out:
        outcome = Outcome.TIMEOUT
        error = InvocationError(kind="timeout", message=f"deadline of {spec.limits.timeout_ms} ms exceeded")
    elif result.oom_killed and code != 0:
        outcome, code = Outcome.OUT_OF_MEMORY, None
        error = InvocationError(kind="out_of_memory", message=f"memory limit of {spec.limits.memory_mb} MiB reached")
    elif code == 0:
        outcome = Outcome.SUCCESS
    else:
        outcome = Outcome.FUNCTION_ERROR
        error = InvocationError(kind="exit", message=_describe_exit(code, result))
    return RunResult.captured(
        outcome,
        result.stdout,
        result.stderr,
        exit_code=code,
        duration_ms=result.duration_ms,
        peak_memory_bytes=result.peak_memory_bytes,
        error=error,
    )


def _describe_exit(code: int | None, result: SandboxResult) -> str:
    if code is not None and 128 < code < 128 + signal.NSIG:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        message = f"killed by {name} (exit status {code})"
    else:
        message = f"exited with code {code}"
    if result.pids_limit_hit:
        message += "; the task limit was reached"
    lines = result.stderr.getvalue().decode(errors="replace").strip().splitlines()
    return f"{message}: {lines[-1][:200]}" if lines else message


def create_linux_runtime(
    settings: Settings, fetch_artifact: FetchArtifact, linux: LinuxSettings | None = None
) -> LinuxRuntime:
    """What the worker calls: the tier with its cache under ``data_dir`` and the worker's capacity."""
    return LinuxRuntime(
        fetch_artifact,
        cache_dir=settings.data_dir / "cache" / "linux",
        concurrency=settings.worker.capacity,
        settings=linux,
        box_capacity=settings.sandboxes.capacity,
    )
