"""Helpers of the Linux tier's tests: run a script, look for leftovers."""

from __future__ import annotations

from pathlib import Path

from soulbox.runtimes.linux.sandbox import Launcher, SandboxLimits, SandboxResult

MIB = 1024 * 1024
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/work", "LANG": "C.UTF-8"}
PYTHON = "/usr/bin/python3"


def limits(*, memory_mb: int = 64, timeout_s: float = 10.0, max_output: int = MIB) -> SandboxLimits:
    return SandboxLimits(memory_bytes=memory_mb * MIB, timeout_s=timeout_s, max_output_bytes=max_output)


async def sh(
    launcher: Launcher, script: str, *, stdin: bytes = b"", memory_mb: int = 64, timeout_s: float = 10.0
) -> SandboxResult:
    lim = limits(memory_mb=memory_mb, timeout_s=timeout_s)
    return await launcher.run(["/bin/sh", "-c", script], stdin=stdin, limits=lim, env=ENV)


async def py(launcher: Launcher, source: str, *, memory_mb: int = 64, timeout_s: float = 10.0) -> SandboxResult:
    lim = limits(memory_mb=memory_mb, timeout_s=timeout_s)
    return await launcher.run([PYTHON, "-c", source], stdin=b"", limits=lim, env=ENV)


def out(result: SandboxResult) -> str:
    return result.stdout.getvalue().decode()


def sandbox_cgroups(launcher: Launcher) -> list[Path]:
    """Per-sandbox cgroup directories still present under the launcher's parents."""
    return [p for parent in launcher.cgroup_parents for p in Path(parent).glob("sb-*")]


def processes_of(launcher: Launcher) -> list[int]:
    """Host pids running as one of the launcher's sandbox uids."""
    uids = range(launcher.settings.uid_base, launcher.settings.uid_base + 64)
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and host_uid(int(e.name)) in uids]


def cgroup_pids(launcher: Launcher) -> list[int]:
    """Host pids inside the launcher's sandbox cgroups."""
    pids = []
    for cgroup in sandbox_cgroups(launcher):
        try:
            pids += [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            continue
    return pids


def host_uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
