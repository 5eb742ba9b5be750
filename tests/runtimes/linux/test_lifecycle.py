"""Sandboxes end completely: after exit, timeout, cancellation or a failed start, nothing is left."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path

import pytest

from soulbox.runtimes.linux.errors import SandboxSetupFailed
from soulbox.runtimes.linux.reaper import sweep
from soulbox.runtimes.linux.sandbox import Launcher

from .conftest import isolated_settings
from .helpers import ENV, limits, out, processes_of, sandbox_cgroups, sh


def _mounts() -> list[str]:
    return [" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _assert_nothing_left(launcher: Launcher) -> None:
    assert sandbox_cgroups(launcher) == []
    assert processes_of(launcher) == []


async def test_timeout_kills_the_whole_sandbox(launcher: Launcher) -> None:
    script = "sleep 1000 & (while :; do :; done) & sh -c 'sleep 1000' & wait"
    result = await sh(launcher, script, timeout_s=0.3)
    assert result.timed_out and result.exit_code is None
    assert 300 <= result.duration_ms < 1500
    _assert_nothing_left(launcher)


async def test_background_processes_die_with_the_command(launcher: Launcher) -> None:
    started = time.perf_counter()
    result = await sh(launcher, "sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & echo bye")
    assert result.exit_code == 0 and out(result) == "bye\n"
    assert time.perf_counter() - started < 2  # not held up by the daemons
    _assert_nothing_left(launcher)


async def test_a_guest_that_closes_stdout_still_ends_at_its_deadline(launcher: Launcher) -> None:
    result = await sh(launcher, "exec >&- 2>&-; sleep 1000", timeout_s=0.3)
    assert result.timed_out
    _assert_nothing_left(launcher)


async def test_input_the_guest_never_reads(launcher: Launcher) -> None:
    result = await sh(launcher, "echo ignored", stdin=b"x" * (4 * 1024 * 1024))
    assert result.exit_code == 0 and out(result) == "ignored\n"


async def test_cancelled_run_leaves_nothing(launcher: Launcher) -> None:
    task = asyncio.ensure_future(sh(launcher, "sleep 1000 & sleep 1000"))
    for _ in range(300):
        if processes_of(launcher):
            break
        await asyncio.sleep(0.01)
    assert processes_of(launcher)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_nothing_left(launcher)


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 4, 8, 16])
async def test_cancellation_at_any_moment_leaves_nothing(launcher: Launcher, delay_ms: int) -> None:
    task = asyncio.ensure_future(sh(launcher, "sleep 1000 & sleep 1000"))
    await asyncio.sleep(delay_ms / 1000)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    _assert_nothing_left(launcher)


async def test_sweep_kills_and_reaps_everything_of_a_sandbox_uid(kernel_ok: None) -> None:
    uid = isolated_settings().uid_base
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    proc = await asyncio.create_subprocess_exec(*setpriv, "sh", "-c", "sleep 1000 & sleep 1000")
    await asyncio.sleep(0.05)
    assert await sweep(uid, exclude=proc.pid) >= 2
    assert await proc.wait() == -9
    launcher_like = type("L", (), {"settings": isolated_settings(uid_base=uid)})()
    assert processes_of(launcher_like) == []  # type: ignore[arg-type]


async def test_stale_instance_cgroups_of_dead_workers_are_collected(kernel_ok: None) -> None:
    first = Launcher(isolated_settings(), concurrency=1)
    dead_pid = 10**8 + secrets.randbelow(10**8)  # above any pid_max: never a live process
    stale = [Path(p).with_name(f"w{dead_pid}-abcdef") for p in first.cgroup_parents]
    for path in stale:
        (path / "sb-left-behind").mkdir(parents=True)
    await first.close()
    second = Launcher(isolated_settings(), concurrency=1)  # sets up on the same shared parents
    try:
        assert not any(path.exists() for path in stale)
    finally:
        await second.close()


async def test_failed_start_is_a_setup_error(launcher: Launcher) -> None:
    with pytest.raises(SandboxSetupFailed, match="execvp /nonexistent"):
        await launcher.run(["/nonexistent"], stdin=b"", limits=limits(), env=ENV)
    _assert_nothing_left(launcher)


async def test_no_mount_or_cgroup_leaks_after_many_runs(kernel_ok: None) -> None:
    before = _mounts()
    launcher = Launcher(isolated_settings(), concurrency=4)
    parents = [Path(p) for p in launcher.cgroup_parents]
    results = await asyncio.gather(*(sh(launcher, f"echo {i}") for i in range(12)))
    assert [out(r) for r in results] == [f"{i}\n" for i in range(12)]
    _assert_nothing_left(launcher)
    await launcher.close()
    assert not any(p.exists() for p in parents)  # the parent cgroups are gone too
    assert _mounts() == before  # every sandbox mount lived in its own mount namespace


async def test_runs_beyond_concurrency_wait_for_a_free_uid(kernel_ok: None) -> None:
    launcher = Launcher(isolated_settings(), concurrency=2)
    try:
        script = "cat /proc/self/uid_map >/dev/null; sleep 0.2; echo ok"
        started = time.perf_counter()
        results = await asyncio.gather(*(sh(launcher, script) for _ in range(4)))
        assert [out(r) for r in results] == ["ok\n"] * 4
        assert time.perf_counter() - started >= 0.4  # two rounds of two
    finally:
        await launcher.close()
