"""Real sandboxes for the Linux tier's tests: bubblewrap, cgroups and seccomp on this host."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.tiersettings import DEFAULT_UID_BASE, LinuxSettings
from soulbox.runtimes.linux.sandbox import Launcher


def _kernel_lacks() -> str | None:
    if os.geteuid() != 0:
        return "the launcher manages cgroups: run the tests as root"
    max_userns = Path("/proc/sys/user/max_user_namespaces")
    if not max_userns.exists() or int(max_userns.read_text()) == 0:
        return "this kernel has user namespaces disabled"
    if not Path("/proc/self/ns/pid").exists():
        return "this kernel has no pid namespaces"
    return None


@pytest.fixture(scope="session")
def kernel_ok() -> None:
    reason = _kernel_lacks()
    if reason:
        pytest.skip(reason)


def isolated_settings(**overrides: object) -> LinuxSettings:
    """Settings whose host uids no other test run on this machine shares (cgroups never are)."""
    base = DEFAULT_UID_BASE + secrets.randbelow(1_000_000) * 64
    return LinuxSettings.model_validate({"pids_max": 64, "uid_base": base, **overrides})


@pytest_asyncio.fixture
async def launcher(kernel_ok: None) -> AsyncIterator[Launcher]:
    sandbox_launcher = Launcher(isolated_settings(), concurrency=4)
    try:
        yield sandbox_launcher
    finally:
        await sandbox_launcher.close()
        await sandbox_launcher.close()  # repeat-safe
