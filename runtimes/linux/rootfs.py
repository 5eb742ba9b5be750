"""The sandbox's filesystem, as bubblewrap arguments.

The root is an empty tmpfs, remounted read-only once populated:

* the host's ``/usr`` and ``/lib*``, ``/bin``, ``/sbin`` bound read-only
  (symlinks, as on merged-/usr systems, recreated as symlinks);
* ``/etc``: one read-only bind of a skeleton made when the layout is built —
  generated ``passwd``/``group``/``hosts``/``hostname``/``nsswitch.conf`` plus
  a copy of the few host entries a program needs (loader cache, TLS roots,
  time zone, alternatives, python config), world-readable parts only, so
  nothing the sandbox user could not read on the host (``/etc/ssl/private``)
  is copied. One mount instead of one per entry; a host change to those
  entries is seen by sandboxes started after the next worker restart;
* a fresh ``/proc`` of the sandbox's pid namespace, a minimal ``/dev``
  (null, zero, full, random, urandom, tty, pts, shm);
* private size-capped tmpfs ``/tmp`` and ``/work`` (the working directory);
* the function's files, copied in read-only from file descriptors (so the
  unprivileged sandbox user never needs to reach the host's cache directory).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from soulbox.core.tiersettings import LinuxSettings

RUNTIME_DIRS = ("/dev/shm", "/run")  # tmpfs on most hosts: a skeleton of a thousand entries in milliseconds
SKELETON_PREFIX = "soulbox-rootfs-"
CODE_DIR = "/code"
WORK_DIR = "/work"


def generated_etc(hostname: str) -> dict[str, bytes]:
    return {
        "/etc/passwd": b"root:x:0:0:root:/work:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost\n".encode(),
        "/etc/hostname": f"{hostname}\n".encode(),
        "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files\n",
        "/etc/resolv.conf": b"",  # a mount point: sandboxes with egress get a resolver bound over it
    }


class RootLayout:
    """What every sandbox's filesystem shares, read from the host once."""

    def __init__(self, settings: LinuxSettings) -> None:
        args = [
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--uid", "0", "--gid", "0", "--hostname", settings.hostname,
        ]  # fmt: skip
        for path in settings.system_paths:
            host = Path(path)
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), path]
            elif host.is_dir():
                args += ["--ro-bind", path, path]
        base = Path(
            settings.runtime_dir or next((d for d in RUNTIME_DIRS if os.access(d, os.W_OK)), tempfile.gettempdir())
        )
        _collect_stale(base)
        self.skeleton = Path(tempfile.mkdtemp(prefix=f"{SKELETON_PREFIX}{os.getpid()}-", dir=base))
        try:
            _build_etc(self.skeleton / "etc", settings)
            self.skeleton.chmod(0o755)  # the sandbox's host uid must reach it to bind it
        except BaseException:
            shutil.rmtree(self.skeleton, ignore_errors=True)
            raise
        args += ["--ro-bind", str(self.skeleton / "etc"), "/etc", "--proc", "/proc", "--dev", "/dev"]
        self._args = args

    def args(
        self,
        *,
        tmpfs_bytes: int,
        files: Mapping[str, int],
        ro_binds: Mapping[str, str] | None = None,
        rw_binds: Mapping[str, str] | None = None,
        dirs: Sequence[str] = (),
    ) -> list[str]:
        """The arguments for one sandbox; ``files`` maps a path inside to an fd open for reading at offset 0.

        ``ro_binds``/``rw_binds`` map host paths to sandbox paths; ``dirs`` are
        made (empty) before the root turns read-only, e.g. inside ``/tmp``.
        """
        args = list(self._args)
        for dir_ in ("/tmp", WORK_DIR):
            args += ["--size", str(tmpfs_bytes), "--tmpfs", dir_]
        for dest, fd in files.items():
            args += ["--ro-bind-data", str(fd), dest]
        for source, dest in (ro_binds or {}).items():
            args += ["--ro-bind", source, dest]
        for source, dest in (rw_binds or {}).items():
            args += ["--bind", source, dest]
        for dir_ in dirs:
            args += ["--dir", dir_]
        args += ["--chdir", WORK_DIR, "--remount-ro", "/"]
        return args

    def box_args(
        self, *, tmpfs_bytes: int, ro_binds: Mapping[str, str], rw_binds: Mapping[str, str], home: str
    ) -> list[str]:
        """The arguments for a long-lived sandbox: writable scratch space where programs expect it.

        The root stays a writable tmpfs (``mkdir /data`` works), ``/usr/local``
        is a tmpfs over the read-only ``/usr`` (so ``pip install`` lands
        somewhere), and ``/tmp``, ``/var``, the home directory and ``/work`` are
        size-capped tmpfs. Every byte written is charged to the sandbox's memory
        cgroup. ``ro_binds``/``rw_binds`` map host paths to sandbox paths.
        """
        args = list(self._args)
        for dir_ in ("/tmp", "/var", "/usr/local", home, WORK_DIR):
            args += ["--size", str(tmpfs_bytes), "--tmpfs", dir_]
        for source, dest in ro_binds.items():
            args += ["--ro-bind", source, dest]
        for source, dest in rw_binds.items():
            args += ["--bind", source, dest]
        args += ["--chdir", home]
        return args

    def close(self) -> None:
        shutil.rmtree(self.skeleton, ignore_errors=True)


def _collect_stale(base: Path) -> None:
    """Remove skeletons left by workers that died without closing their layout."""
    for entry in base.glob(f"{SKELETON_PREFIX}*-*"):
        pid = entry.name.removeprefix(SKELETON_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(entry, ignore_errors=True)


def _build_etc(etc: Path, settings: LinuxSettings) -> None:
    etc.mkdir()
    for name in settings.etc_files:
        source = Path("/etc") / name
        if source.is_symlink() or source.exists():
            _copy_public(source, etc / name)
    for dest, data in generated_etc(settings.hostname).items():
        path = etc / Path(dest).name
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)


def _copy_public(source: Path, dest: Path) -> None:
    """Copy what any user may read: symlinks as they are, files and directories readable by others."""
    if source.is_symlink():
        dest.symlink_to(os.readlink(source))
        return
    mode = source.stat().st_mode
    if stat.S_ISDIR(mode):
        if mode & 0o005 != 0o005:
            return
        dest.mkdir(mode=0o755)
        for child in sorted(source.iterdir()):
            _copy_public(child, dest / child.name)
    elif stat.S_ISREG(mode) and mode & 0o004:
        shutil.copyfile(source, dest)
        dest.chmod(0o644)
