"""The seccomp-BPF filter every sandbox runs under, compiled once by libseccomp.

Allow by default, refuse (``EPERM``) what a function never needs and what
widens the kernel's attack surface: mounting and namespace games, tracing
other processes, kernel modules and kexec, BPF, the keyring, perf, swap,
reboot, io_uring, clock changes and terminal injection. ``clone3`` answers
``ENOSYS`` (its flags sit behind a pointer a filter cannot read; libc falls
back to ``clone``, whose flags are checked). Other architectures' syscall
ABIs (i386 on x86_64) kill the process. bubblewrap loads the program as the
last step before exec, after ``no_new_privs``.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from .errors import SandboxUnavailable

# fmt: off
DENIED: Final = (
    # filesystems and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "setns", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "open_by_handle_at", "name_to_handle_at",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # the kernel itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "create_module",
    "bpf", "perf_event_open", "lookup_dcookie", "syslog", "acct", "quotactl", "quotactl_fd",
    "swapon", "swapoff", "reboot", "uselib", "_sysctl", "ustat", "sysfs", "vhangup", "nfsservctl",
    "iopl", "ioperm", "userfaultfd", "fanotify_init",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # keyring
    "keyctl", "add_key", "request_key",
    # clocks
    "settimeofday", "clock_settime", "clock_adjtime", "stime",
)
# fmt: on

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
CLONE_NEWTIME: Final = 0x00000080  # unshare only: in clone() these bits carry the exit signal
NAMESPACE_FLAGS: Final = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID)
NAMESPACE_FLAGS_ALL: Final = (*NAMESPACE_FLAGS, CLONE_NEWNET)
TIOCSTI: Final = 0x5412  # push bytes into a terminal's input
TIOCLINUX: Final = 0x541C


def build_filter() -> bytes:
    """The compiled BPF program for this machine's architecture."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # the binding, or libseccomp.so.2 under it, is missing
        raise SandboxUnavailable(f"libseccomp is not usable: {exc}") from exc

    deny = sc.ERRNO(errno.EPERM)
    native = sc.system_arch()
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for name in DENIED:
        if sc.resolve_syscall(native, name) >= 0:  # negative: not a syscall on this architecture
            f.add_rule(deny, name)
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in (*NAMESPACE_FLAGS_ALL, CLONE_NEWTIME):
        f.add_rule(deny, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for flag in NAMESPACE_FLAGS_ALL:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))

    fd = os.memfd_create("soulbox-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as file:
        f.export_bpf(file)
        file.seek(0)
        return file.read()
