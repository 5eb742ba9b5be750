"""Cgroup detection and the v2 driver's file protocol.

The v1 driver runs for real in every other test on a v1 host; a v2 host runs
the v2 driver for real the same way. Here both hierarchies' parsing, and the
v2 driver's writes on a directory tree laid out like cgroupfs, are checked
on any host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from soulbox.runtimes.linux.cgroup import (
    CgroupLimits,
    CgroupMount,
    cgroup_dir,
    parent_dir,
    parse_mountinfo,
    parse_proc_cgroup,
    read_io,
)
from soulbox.runtimes.linux.cgroup_v2 import WORKER_LEAF, CgroupV2, SandboxCgroupV2
from soulbox.runtimes.linux.errors import SandboxUnavailable

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
32 30 0:30 / /proc rw,nosuid,nodev,noexec,relatime shared:16 - proc proc rw
"""
UNIFIED = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_parse_mountinfo_hybrid_and_unified() -> None:
    mounts = parse_mountinfo(HYBRID)
    assert [(str(m.path), m.version) for m in mounts] == [
        ("/sys/fs/cgroup/unified", 2),
        ("/sys/fs/cgroup/memory", 1),
        ("/sys/fs/cgroup/cpu,cpuacct", 1),
        ("/sys/fs/cgroup/pids", 1),
    ]
    assert {"cpu", "cpuacct"} <= mounts[2].controllers
    assert parse_mountinfo(UNIFIED) == [CgroupMount(Path("/sys/fs/cgroup"), "/", 2, frozenset())]


def test_parse_proc_cgroup() -> None:
    own = parse_proc_cgroup("12:pids:/a\n4:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/system.slice/w.service\n")
    assert own == {"pids": "/a", "cpu": "/b", "cpuacct": "/b", "systemd": "/c", "": "/system.slice/w.service"}


def test_cgroup_dirs_respect_the_mounted_root_and_the_parent_setting() -> None:
    mount = CgroupMount(Path("/sys/fs/cgroup"), "/docker/abc", 2, frozenset())
    assert cgroup_dir(mount, "/docker/abc/worker") == Path("/sys/fs/cgroup/worker")
    root = CgroupMount(Path("/sys/fs/cgroup"), "/", 2, frozenset())
    assert parent_dir(root, "/w.service", None) == Path("/sys/fs/cgroup/w.service/soulbox-sandboxes")
    assert parent_dir(root, "/w.service", "mine") == Path("/sys/fs/cgroup/w.service/mine")
    assert parent_dir(root, "/w.service", "/soulbox.slice") == Path("/sys/fs/cgroup/soulbox.slice")


def _fake_v2(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> tuple[CgroupMount, Path]:
    own = tmp_path / "system.slice" / "worker.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    return CgroupMount(tmp_path, "/", 2, frozenset()), own


def test_v2_enables_controllers_down_to_the_sandboxes(tmp_path: Path) -> None:
    mount, own = _fake_v2(tmp_path)
    (own / WORKER_LEAF).mkdir()
    instance = own / "soulbox-sandboxes" / "w1"
    for path in (instance.parent, instance):  # cgroupfs would create their interface files itself
        path.mkdir()
        (path / "cgroup.subtree_control").write_text("")
    driver = CgroupV2.setup(mount, f"/system.slice/worker.service/{WORKER_LEAF}", None, "w1")  # after evacuating
    assert driver.parents == (instance,)
    for path in (own, instance.parent, instance):
        assert (path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu +io"


def test_v2_refuses_without_delegated_controllers(tmp_path: Path) -> None:
    mount, _ = _fake_v2(tmp_path, controllers="cpu io")
    with pytest.raises(SandboxUnavailable, match="memory, pids are not delegated"):
        CgroupV2.setup(mount, "/system.slice/worker.service", None, "w1")


def test_v2_sandbox_files(tmp_path: Path) -> None:
    cg = SandboxCgroupV2("sb-1", tmp_path)
    for name, text in {
        "memory.events": "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n",
        "memory.peak": "33554432\n",
        "pids.events": "max 3\n",
        "cgroup.procs": "",
    }.items():
        (tmp_path / name).write_text(text)
    stats = cg.stats()
    assert (stats.oom_kills, stats.memory_limit_hits, stats.peak_memory_bytes, stats.pids_limit_hits) == (
        1, 12, 32 << 20, 3,
    )  # fmt: skip
    assert CgroupLimits(1, 8, 0.5).cpu_quota == 0.5


def test_io_bytes_from_v2_io_stat_and_v1_blkio(tmp_path: Path) -> None:
    v2 = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=1 wbytes=2 rios=1 wios=1\n"
    assert read_io(v2) == (4097, 8194)
    v1 = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Total 4608\n8:16 Read 1\nTotal 4609\n"
    assert read_io(v1) == (4097, 512)
    assert read_io("") == (0, 0)
    cg = SandboxCgroupV2("sb-1", tmp_path)
    (tmp_path / "cpu.stat").write_text("usage_usec 5\n")
    (tmp_path / "memory.current").write_text("100\n")
    assert (cg.usage().io_read_bytes, cg.usage().io_write_bytes) == (None, None)  # no io controller
    (tmp_path / "io.stat").write_text(v2)
    assert (cg.usage().io_read_bytes, cg.usage().io_write_bytes) == (4097, 8194)
