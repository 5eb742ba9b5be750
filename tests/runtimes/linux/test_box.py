"""Long-lived sandboxes: started ready, writable where programs expect, frozen and thawed, gone without a trace."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.runtimes.linux.box import Box, BoxLimits
from soulbox.runtimes.linux.errors import SandboxSetupFailed
from soulbox.runtimes.linux.sandbox import Launcher

from .conftest import isolated_settings
from .helpers import ENV, MIB, PYTHON

# Stands in for envd: says it is ready, then serves a unix socket in the shared run directory.
DAEMON = """
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind("/run/soulbox/envd.sock")
s.listen()
print("noise first", flush=True)
print("envd ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(open(c.recv(100).decode()).read().encode() if True else b"")
    c.close()
"""
LIMITS = BoxLimits(memory_bytes=128 * MIB, cpu_quota=1.0, pids_max=64, disk_bytes=16 * MIB)


@pytest_asyncio.fixture
async def box_launcher(kernel_ok: None) -> AsyncIterator[Launcher]:
    launcher = Launcher(isolated_settings(), concurrency=1, box_capacity=2)
    try:
        yield launcher
    finally:
        await launcher.close()


async def start(launcher: Launcher, source: str = DAEMON, *, timeout: float = 10.0) -> Box:
    return await launcher.start(
        os.urandom(4).hex(),
        [PYTHON, "-c", source],
        limits=LIMITS,
        env=ENV,
        ro_binds={},
        home="/home/user",
        ready=(b"envd ready",),
        ready_timeout=timeout,
    )


async def ask(box: Box, path: str) -> str:
    reader, writer = await asyncio.open_unix_connection(str(box.socket))
    writer.write(path.encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data.decode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def box_cgroups(launcher: Launcher) -> list[Path]:
    return [p for parent in launcher.cgroup_parents for p in Path(parent).glob("box-*")]


async def test_a_box_serves_on_its_socket_until_closed(box_launcher: Launcher) -> None:
    box = await start(box_launcher)
    try:
        assert box.alive and box.socket.is_socket()
        assert "noise first" in box.log.getvalue().decode()
        assert (await ask(box, "/etc/hostname")).strip() == "sandbox"
        assert box_cgroups(box_launcher)
        pid = box.session.pid
    finally:
        await box.close()
    await box.close()  # repeat-safe
    assert not box.alive
    assert not box.run_dir.exists()
    assert box_cgroups(box_launcher) == []
    assert not _alive(pid)


async def test_home_tmp_and_usr_local_are_writable_and_capped(box_launcher: Launcher) -> None:
    script = (
        "import os\n"
        "for d in ('/home/user', '/tmp', '/usr/local', '/var'):\n"
        "    open(d + '/f', 'w').write('x')\n"
        "os.mkdir('/data')\n"
        "try:\n"
        "    open('/usr/bin/nope', 'w')\n"
        "except OSError as e:\n"
        "    print('usr read-only', e.errno, flush=True)\n"
        "try:\n"
        "    open('/home/user/big', 'wb').write(b'x' * (32 << 20))\n"
        "except OSError as e:\n"
        "    print('capped', e.errno, flush=True)\n"
        "print(os.getcwd(), flush=True)\n"
        "print('envd ready', flush=True)\n"
        "import time; time.sleep(1000)\n"
    )
    box = await start(box_launcher, script)
    try:
        log = box.log.getvalue().decode()
        assert "usr read-only 30" in log  # EROFS
        assert "capped 28" in log  # ENOSPC: the 16 MiB tmpfs
        assert "/home/user" in log
        assert box.disk_used("/home/user") >= 16 * MIB - 64 * 1024
    finally:
        await box.close()


async def test_freeze_stops_the_clock_inside_and_thaw_restarts_it(box_launcher: Launcher, tmp_path: Path) -> None:
    ticker = (
        "import time, sys\n"
        "print('envd ready', flush=True)\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        "    print(n, flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    box = await start(box_launcher, ticker)
    try:
        await asyncio.sleep(0.2)
        await box.freeze()
        assert box.frozen
        before = len(box.log.getvalue().splitlines())
        await asyncio.sleep(0.3)
        assert len(box.log.getvalue().splitlines()) == before  # nothing ran while frozen
        box.thaw()
        await asyncio.sleep(0.3)
        assert len(box.log.getvalue().splitlines()) > before + 5
        usage = box.usage()
        assert usage.memory_bytes > 0
    finally:
        await box.close()


async def test_a_frozen_box_can_be_killed(box_launcher: Launcher) -> None:
    box = await start(box_launcher)
    await box.freeze()
    started = time.perf_counter()
    await box.close()
    assert time.perf_counter() - started < 3
    assert box_cgroups(box_launcher) == []


async def test_a_daemon_that_never_gets_ready_fails_the_start_and_leaves_nothing(box_launcher: Launcher) -> None:
    with pytest.raises(SandboxSetupFailed, match="envd ready"):
        await start(box_launcher, "import time; time.sleep(100)", timeout=0.5)
    with pytest.raises(SandboxSetupFailed, match="boom"):
        await start(box_launcher, "import sys; sys.exit('boom')")
    assert box_cgroups(box_launcher) == []
    # both uids were given back: two boxes fit again
    boxes = [await start(box_launcher), await start(box_launcher)]
    for box in boxes:
        await box.close()


async def test_a_box_whose_daemon_exits_is_seen_ended(box_launcher: Launcher) -> None:
    box = await start(box_launcher, "print('envd ready', flush=True)")
    async with asyncio.timeout(5):
        await box.ended()
    assert not box.alive
    await box.close()
    assert box_cgroups(box_launcher) == []
