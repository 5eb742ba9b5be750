"""The bash kernel: one persistent `bash` per context, driven like the other kernels.

Each cell is written to a file and sourced by the same bash process (with stdin from
/dev/null), so variables, functions and `cd` persist. Its output goes straight to fds 1
and 2, which the server streams. A non-zero status is reported as an error named
`ExitCode`; SIGINT makes the sourced cell return 130 (reported as `Interrupted`).
If bash itself exits (`exit` in a cell), so does the kernel, and the server reports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from types import FrameType

from .kernelio import Channel

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _cell_script(path: str, env: dict[str, str], status_fd: int) -> str:
    """Bash that sets `env`, sources the cell, restores `env` and reports the status."""
    names = [name for name in env if _NAME.match(name)]
    lines = []
    for i, name in enumerate(names):
        lines.append(
            f'if [ "${{{name}+x}}" = x ]; then __sb_set{i}=1; __sb_val{i}="${name}"; else __sb_set{i}=0; fi; '
            f"export {name}={shlex.quote(env[name])}"
        )
    lines.append(f"source {shlex.quote(path)} < /dev/null")
    lines.append("__sb_status=$?")
    for i, name in enumerate(names):
        lines.append(f'if [ "$__sb_set{i}" = 1 ]; then export {name}="$__sb_val{i}"; else unset {name}; fi')
    lines.append(f'printf "%d\\n" "$__sb_status" >&{status_fd}')
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the kernel: `python -c <boot> <proto-fd>` (see the server's launcher)."""
    proto_fd = int(sys.argv[1])
    sys.argv = [""]
    channel = Channel(proto_fd)
    requests = sys.stdin.buffer
    status_r, status_w = os.pipe()
    workdir = tempfile.mkdtemp(prefix="soulbox-bash-")
    bash = subprocess.Popen(
        [shutil.which("bash") or "/bin/bash", "--noprofile", "--norc"],
        stdin=subprocess.PIPE,
        pass_fds=(status_w,),
    )
    os.close(status_w)
    assert bash.stdin is not None
    status = os.fdopen(status_r, "r")

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        """The interrupt is for bash (it shares the process group), not for this process."""

    signal.signal(signal.SIGINT, on_sigint)
    # `return` from a trap leaves the sourced cell; outside a cell it is a harmless error.
    bash.stdin.write(b"trap 'return 130 2>/dev/null' INT\n")
    bash.stdin.flush()
    channel.send({"t": "ready", "pid": os.getpid()})
    count = 0
    try:
        for line in requests:
            request = json.loads(line)
            count += 1
            channel.send({"t": "count", "n": count})
            path = os.path.join(workdir, f"cell-{count}.sh")
            with open(path, "w", encoding="utf-8") as cell:
                cell.write(str(request["code"]))
            env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
            try:
                bash.stdin.write(_cell_script(path, env, status_w).encode())
                bash.stdin.flush()
            except BrokenPipeError:
                break  # bash exited
            reported = status.readline()
            os.unlink(path)
            if not reported:
                break  # bash exited
            code = int(reported)
            if code == 130:
                channel.send({"t": "error", "name": "Interrupted", "value": "interrupted by SIGINT", "traceback": ""})
            elif code != 0:
                channel.send({"t": "error", "name": "ExitCode", "value": str(code), "traceback": ""})
            channel.send({"t": "done"})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(BrokenPipeError):
        bash.stdin.close()  # the server is gone (or bash is): let bash end too
    sys.exit(bash.wait())
