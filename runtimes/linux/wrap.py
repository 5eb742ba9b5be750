"""The command line that puts one command in a bubblewrap sandbox as an unprivileged host uid.

Shared by the Linux tier's :class:`~.sandbox.Launcher` and the JS tier's
sandboxed runtime processes: ``setpriv`` drops to the sandbox's host uid
(root inside maps to it), bubblewrap builds the root from ``root_args``
(see :class:`~.rootfs.RootLayout`), reports the sandbox's pid 1 on
``status_fd``, waits on ``block_fd`` until the caller has moved that pid
into its cgroup, and loads the seccomp program read from ``seccomp_fd``.
A sandbox with network egress starts in a namespace made by the host.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def sandbox_argv(
    setpriv: str,
    bwrap: str,
    uid: int,
    root_args: Sequence[str],
    command: Sequence[str],
    *,
    status_fd: int,
    block_fd: int,
    seccomp_fd: int,
    netns: str | None = None,
    nsenter: str = "nsenter",
) -> list[str]:
    """``setpriv`` (to ``uid``) + ``bwrap`` (``root_args``, the three fds) + ``command``.

    With ``netns`` (a namespace's path, see :mod:`.netns`), ``nsenter`` moves
    the chain into that network namespace first, while still root on the
    host; ``root_args`` must then keep it (``--share-net``).
    """
    prefix = [nsenter, f"--net={netns}", "--"] if netns is not None else []
    return [
        *prefix,
        setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
        bwrap, *root_args,
        "--json-status-fd", str(status_fd), "--block-fd", str(block_fd), "--seccomp", str(seccomp_fd),
        "--", *command,
    ]  # fmt: skip


def seccomp_pipe(program: bytes) -> int:
    """The read end of a pipe holding ``program`` (a compiled filter, about 1 KiB: fits the pipe buffer)."""
    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write, program)
    finally:
        os.close(write)
    return read
