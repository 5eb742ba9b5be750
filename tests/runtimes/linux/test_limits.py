"""Resource limits of real sandboxes: memory, tasks, CPU time, disk (tmpfs)."""

from __future__ import annotations

import asyncio

from soulbox.runtimes.linux.sandbox import Launcher

from .conftest import isolated_settings
from .helpers import out, processes_of, py, sandbox_cgroups, sh


async def test_memory_hog_is_killed(launcher: Launcher) -> None:
    result = await py(launcher, "b = []\nwhile True: b.append(b'x' * (1 << 20))", memory_mb=32)
    assert result.oom_killed and result.exit_code == 137
    assert result.peak_memory_bytes is not None and 16 * 2**20 < result.peak_memory_bytes <= 32 * 2**20


async def test_fork_bomb_is_contained(launcher: Launcher) -> None:
    result = await sh(launcher, "bomb() { bomb | bomb & }; bomb; sleep 5", timeout_s=1.5)
    assert result.pids_limit_hit
    # The host is fine: it can still start processes, and nothing of the bomb is left.
    host = await asyncio.create_subprocess_exec("true")
    assert await host.wait() == 0
    assert processes_of(launcher) == [] and sandbox_cgroups(launcher) == []


async def test_tmpfs_is_capped(launcher: Launcher) -> None:
    result = await sh(launcher, "head -c 40000000 /dev/zero > /tmp/big; echo $?; du -m /tmp/big", memory_mb=64)
    assert out(result) == "1\n32\t/tmp/big\n"  # /tmp holds half the memory limit, then: no space left
    assert b"No space left on device" in result.stderr.getvalue()


async def test_cpu_quota_throttles_a_busy_loop(kernel_ok: None) -> None:
    launcher = Launcher(isolated_settings(cpu_quota=0.2), concurrency=1)
    source = (
        "import time\n"
        "wall, cpu = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - wall < 0.6: pass\n"
        "print(round((time.process_time() - cpu) / (time.monotonic() - wall), 2))\n"
    )
    try:
        result = await py(launcher, source)
    finally:
        await launcher.close()
    share = float(out(result))
    assert 0.05 < share < 0.45  # about 0.2 of a core


async def test_memory_peak_is_reported(launcher: Launcher) -> None:
    result = await py(launcher, "b = b'x' * (20 << 20)\nprint(len(b))", memory_mb=64)
    assert result.exit_code == 0 and not result.oom_killed
    assert result.peak_memory_bytes is not None and 20 << 20 < result.peak_memory_bytes < 64 << 20


async def test_threads_count_against_the_task_limit(launcher: Launcher) -> None:
    source = (
        "import threading, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        threading.Thread(target=time.sleep, args=(2,), daemon=True).start(); n += 1\n"
        "except RuntimeError:\n"
        "    pass\n"
        "print(n)\n"
    )
    result = await py(launcher, source)
    assert result.pids_limit_hit and int(out(result)) < 64
