"""Read grants of Wasmtime functions: directories preopened read-only, only under configured roots.

WASI gives a guest no filesystem unless the host preopens a directory. A
function's ``permissions.read`` lists the directories it may read; each must
lie under one of ``settings.wasm.read_roots`` (empty by default: no grant is
accepted), so a tenant cannot ask for the worker's own files. The gateway
checks grants at deploy; the worker checks them again, on its own filesystem
with symlinks resolved, before every run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from soulbox.core.errors import InvalidRequest

ROOTS_SETTING = "SOULBOX_WASM__READ_ROOTS"


class GrantRefused(InvalidRequest):
    """A requested permission the Wasmtime tier does not give."""

    code = "grant_refused"


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_read_grants(paths: Sequence[str], roots: Sequence[Path]) -> None:
    """Raise :class:`GrantRefused` unless every path is absolute and under one of ``roots``.

    Where a path exists here its symlinks are resolved first, so a link under a
    root cannot point outside it; the worker repeats the check on its own host.
    """
    if paths and not roots:
        raise GrantRefused(f"read grants are disabled: no directory is allowed until {ROOTS_SETTING} lists roots")
    allowed = [os.path.realpath(root) for root in roots]
    for path in paths:
        if not os.path.isabs(path) or "\0" in path:
            raise GrantRefused(f"read grant {path!r} must be an absolute path")
        resolved = os.path.realpath(path)
        if not _under(resolved, allowed):
            raise GrantRefused(
                f"read grant {path!r} is outside the directories {ROOTS_SETTING} allows: "
                + ", ".join(str(root) for root in roots)
            )


def resolve_read_grants(paths: Sequence[str], roots: Sequence[Path]) -> list[tuple[str, str]]:
    """(host directory, guest path) pairs to preopen; GrantRefused if one is not allowed or not a directory.

    The guest sees each directory at the path it was granted under; the host side is resolved.
    """
    check_read_grants(paths, roots)
    pairs = []
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            raise GrantRefused(f"read grant {path!r} is not a directory on this worker")
        pairs.append((real, os.path.normpath(path)))
    return pairs
