"""Escape attempts against real sandboxes: files, processes, privileges, network."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from soulbox.runtimes.linux.sandbox import Launcher

from .helpers import cgroup_pids, host_uid, out, py, sh


async def test_root_inside_is_an_unprivileged_uid_outside(launcher: Launcher) -> None:
    result = await sh(launcher, "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; hostname")
    lines = out(result).split()
    assert lines[0] == "0"  # root inside ...
    assert lines[1:7] == ["CapPrm:", "0" * 16, "CapEff:", "0" * 16, "CapBnd:", "0" * 16]  # ... with no capability
    assert lines[7] == "sandbox"
    # ... and, seen from the host, a uid from the pool, not root.
    task = asyncio.ensure_future(sh(launcher, "sleep 2"))
    try:
        for _ in range(200):
            pids = cgroup_pids(launcher)
            if pids:
                break
            await asyncio.sleep(0.01)
        uids = {host_uid(pid) for pid in pids} - {None}
        assert uids and all(uid >= launcher.settings.uid_base for uid in uids if uid is not None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_host_files_outside_the_bound_paths_are_invisible(launcher: Launcher, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o644)
    result = await sh(launcher, f"cat {secret}; ls /root; cat /etc/shadow; ls /etc/ssl/private; ls /home; echo end")
    assert "top secret" not in out(result)
    assert out(result) == "end\n"
    assert b"No such file or directory" in result.stderr.getvalue()


async def test_system_paths_are_read_only_and_tmp_work_are_private(launcher: Launcher) -> None:
    script = (
        "for p in /usr/x /etc/x /x /code/x; do touch $p 2>/dev/null && echo wrote $p; done; "
        "echo a > /tmp/a && echo b > /work/b && cat /tmp/a /work/b; pwd"
    )
    result = await sh(launcher, script)
    assert out(result) == "a\nb\n/work\n"
    # Each sandbox gets its own /tmp: nothing of the previous one is there.
    again = await sh(launcher, "ls -A /tmp /work")
    assert out(again) == "/tmp:\n\n/work:\n"


async def test_host_processes_are_invisible(launcher: Launcher) -> None:
    result = await sh(launcher, "for p in /proc/[0-9]*; do echo ${p#/proc/} $(cat $p/comm); done")
    processes = dict(line.split() for line in out(result).splitlines())
    assert processes["1"] == "bwrap"  # the sandbox's init
    assert set(processes.values()) <= {"bwrap", "sh", "cat"}  # nothing of the host
    assert len(processes) <= 5


async def test_cannot_signal_a_host_process(launcher: Launcher) -> None:
    victim = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        result = await sh(launcher, f"kill -9 {victim.pid}; echo $?")
        assert out(result).strip() != "0"
        assert victim.returncode is None  # still alive
    finally:
        victim.kill()
        await victim.wait()


async def test_no_network_but_loopback(launcher: Launcher) -> None:
    accepted = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(True)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        source = (
            "import socket\n"
            "s = socket.socket()\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port})); print('connected')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n"
            "print(open('/proc/net/dev').read().count(':'))\n"  # interfaces: lo only
            "print(len(open('/proc/net/route').read().splitlines()))\n"  # no route: only the header
        )
        result = await py(launcher, source)
        assert out(result).split() == ["ConnectionRefusedError", "1", "1"]
        assert not accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_privileged_syscalls_are_refused(launcher: Launcher) -> None:
    source = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def check(name, rc):
    print(name, rc, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
check("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
check("umount", libc.umount2(b"/proc", 2))
check("ptrace", libc.ptrace(16, 1, None, None))  # PTRACE_ATTACH to pid 1
check("unshare_user", libc.unshare(0x10000000))
check("unshare_mount", libc.unshare(0x00020000))
check("unshare_net", libc.unshare(0x40000000))
fd = os.open("/proc/1/ns/mnt", os.O_RDONLY)
check("setns", libc.setns(fd, 0))
check("pivot_root", libc.syscall(155, b"/tmp", b"/tmp"))
check("chroot", libc.chroot(b"/tmp"))
check("reboot", libc.reboot(0x4321FEDC))
check("swapoff", libc.swapoff(b"/tmp"))
check("kexec_load", libc.syscall(246, 0, 0, None, 0))
check("init_module", libc.syscall(175, None, 0, b""))
check("bpf", libc.syscall(321, 0, None, 0))
check("perf_event_open", libc.syscall(298, None, 0, -1, -1, 0))
check("keyctl", libc.syscall(250, 0, 0, 0, 0, 0))
check("add_key", libc.syscall(248, b"user", b"k", b"v", 1, -3))
check("io_uring_setup", libc.syscall(425, 1, None))
check("clone3", libc.syscall(435, None, 0))
"""
    if os.uname().machine != "x86_64":  # raw syscall numbers below are x86_64's
        source = source.split('check("pivot_root"')[0]
    result = await py(launcher, source)
    assert result.exit_code == 0, result.stderr.getvalue()
    lines = dict(line.split(" ", 1) for line in out(result).splitlines())
    for name, verdict in lines.items():
        expected = "-1 ENOSYS" if name == "clone3" else "-1 EPERM"
        assert verdict == expected, f"{name}: {verdict}"
    assert len(lines) >= 7


async def test_new_user_namespaces_are_refused(launcher: Launcher) -> None:
    result = await sh(launcher, "unshare -U true && echo escaped; unshare -r true && echo escaped; echo done")
    assert out(result) == "done\n"


async def test_etc_is_a_small_read_only_skeleton(launcher: Launcher) -> None:
    result = await sh(launcher, "ls /etc; cat /etc/passwd; getent hosts sandbox")
    entries = set(out(result).split("root:x:")[0].split())
    assert {"passwd", "group", "hosts", "hostname", "nsswitch.conf", "ld.so.cache"} <= entries
    assert not entries & {"shadow", "gshadow", "sudoers", "ssh", "machine-id"}
    assert "root:x:0:0:root:/work:/bin/sh" in out(result) and "127.0.0.1" in out(result)


async def test_only_stdio_is_inherited(launcher: Launcher) -> None:
    result = await sh(launcher, "exec ls -l /proc/self/fd")
    fds = {line.split()[-3]: line.split()[-1] for line in out(result).splitlines()[1:]}
    fds = {fd: target for fd, target in fds.items() if not target.endswith("/fd")}  # ls reading the directory
    assert sorted(fds) == ["0", "1", "2"] and all(target.startswith("pipe:") for target in fds.values())
