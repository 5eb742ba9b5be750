"""What the worker process itself needs to host sandboxes, set once per launcher.

* a child subreaper: each sandbox's pid 1 is orphaned when bubblewrap's
  monitor exits, and must come back to the worker to be reaped
  (:mod:`.reaper`) rather than to a host init that may never reap it;
* no inheritable fds: uvloop's spawn (unlike asyncio's) does not close the
  fds a child would inherit, and bubblewrap hands them all to the sandbox;
* the tools, found on PATH once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil

from .errors import SandboxUnavailable

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children (process-wide, idempotent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise SandboxUnavailable(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(errno)}")


def seal_inherited_fds() -> None:
    """Mark every fd above stderr close-on-exec (fds Python opens are so already; inherited ones may not be)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own fd, already gone
            if fd > 2 and os.get_inheritable(fd):
                os.set_inheritable(fd, False)


def which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SandboxUnavailable(f"{program} is not installed (Debian: apt-get install bubblewrap util-linux)")
    return path
