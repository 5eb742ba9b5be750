"""The Python kernel: one process per context, driven by the server over pipes.

Protocol: requests arrive on stdin as JSON lines `{"code": str, "env": {str: str}}`; every
message goes out as one JSON line on the file descriptor named on the command line
(`ready` once, then per request `count`, `stream`, `result`, `error`, and `done` last).
The kernel's own stdout and stderr (fds 1 and 2) are left to the server, which streams
what subprocesses and C code write there; Python-level `print` and `sys.stderr` writes
are sent as messages here, so their relative order is exact.

Semantics follow IPython: all statements run, then the value of a final expression
statement (unless it ends with `;`) is the main result; `display()` adds other results;
pyplot figures open at the end of a cell are published as image/png and closed.
SIGINT during an execution raises KeyboardInterrupt in the user's code; when idle it is
ignored. Stdlib only: this runs on whatever Python the sandbox has.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import json
import linecache
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any

from . import richdisplay
from .kernelio import Channel, OutputBuffer, OutStream

_KERNEL_FILES = {__file__, richdisplay.__file__}


class Kernel:
    """Executes cells in one persistent namespace."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.ns: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": __builtins__,
            "display": richdisplay.display,
        }

    def publish(self, bundle: richdisplay.Bundle, main: bool) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.channel.send({"t": "result", "main": main, "data": bundle})

    def run(self, code: str, env: dict[str, str]) -> None:
        """One request: count, outputs, results, maybe an error, then done."""
        self.count += 1
        self.channel.send({"t": "count", "n": self.count})
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            self.channel.executing = True
            try:
                self._run_cell(code, f"<cell-{self.count}>")
            finally:
                self.channel.executing = False
        except KeyboardInterrupt as exc:  # arrived while the kernel itself was busy
            self._send_error(exc)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            sys.stdout.flush()
            sys.stderr.flush()
            self.channel.send({"t": "done"})

    def _run_cell(self, code: str, filename: str) -> None:
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        try:
            body, last = self._compile(code, filename)
        except (SyntaxError, ValueError, OverflowError) as exc:
            self._send_error(exc, syntax=True)
            return
        try:
            self._exec(body)
            if last is not None:
                value = self._exec(last)
                if value is not None:
                    self.ns["_"] = value
                    bundle = richdisplay.mime_bundle(value)
                    if richdisplay.is_figure(value):
                        pyplot = sys.modules.get("matplotlib.pyplot")
                        if pyplot is not None:
                            pyplot.close(value)
                    self.publish(bundle, True)
            richdisplay.flush_figures()
        except BaseException as exc:
            if isinstance(exc, SystemExit | KeyboardInterrupt | Exception):
                self._send_error(exc)
            else:
                raise

    def _compile(self, code: str, filename: str) -> tuple[CodeType, CodeType | None]:
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = ast.parse(code, filename=filename, mode="exec")
        last_expr: ast.Expression | None = None
        node = tree.body[-1] if tree.body else None
        if isinstance(node, ast.Expr) and not _ends_with_semicolon(code, node):
            tree.body.pop()
            last_expr = ast.Expression(node.value)
            ast.copy_location(last_expr, node)
        body = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        last = compile(last_expr, filename, "eval", flags=flags, dont_inherit=True) if last_expr else None
        return body, last

    def _exec(self, code: CodeType) -> Any:
        result = eval(code, self.ns)
        if code.co_flags & inspect.CO_COROUTINE:
            result = self.loop.run_until_complete(result)
        return result

    def _send_error(self, exc: BaseException, *, syntax: bool = False) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if syntax:
            text = "".join(traceback.format_exception_only(type(exc), exc))
        else:
            report = traceback.TracebackException(type(exc), exc, _user_frames(exc.__traceback__))
            # the SIGINT handler's frame ends an interrupted cell's traceback: not the user's
            report.stack = traceback.StackSummary.from_list(
                [frame for frame in report.stack if frame.filename not in _KERNEL_FILES]
            )
            text = "".join(report.format())
        self.channel.send({"t": "error", "name": type(exc).__name__, "value": str(exc), "traceback": text})


class _MatplotlibHook:
    """`__import__` that points matplotlib at the kernel's backend once it is imported."""

    def __init__(self, real_import: Callable[..., Any], backend: str) -> None:
        self._import = real_import
        self._backend = backend
        self._done = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self._import(*args, **kwargs)
        if not self._done and "matplotlib" in sys.modules:
            matplotlib = sys.modules["matplotlib"]
            # not from within matplotlib's (or pyplot's) own imports: use() needs them whole
            ready = not any(
                getattr(getattr(sys.modules.get(name), "__spec__", None), "_initializing", False)
                for name in ("matplotlib", "matplotlib.pyplot")
            )
            if ready and hasattr(matplotlib, "use"):
                self._done = True
                try:
                    matplotlib.use(self._backend)
                except Exception as exc:  # an odd matplotlib: figures still publish at cell end
                    sys.stderr.write(f"[interpreter] matplotlib backend not set: {exc}\n")
        return module


def _ends_with_semicolon(code: str, node: ast.stmt) -> bool:
    """IPython's rule: a trailing `;` on the last line silences the result."""
    if node.end_lineno is None or node.end_col_offset is None:
        return False
    line = code.splitlines()[node.end_lineno - 1]
    rest = line.encode()[node.end_col_offset :].decode(errors="replace")
    return rest.split("#", 1)[0].strip().startswith(";")


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """Start the traceback at the cell's frame: the kernel's (and asyncio's) are noise."""
    first = tb
    while first is not None and not first.tb_frame.f_code.co_filename.startswith("<cell-"):
        first = first.tb_next
    if first is not None:
        return first
    while tb is not None and tb.tb_frame.f_code.co_filename in _KERNEL_FILES:
        tb = tb.tb_next
    return tb


def main() -> None:
    """Run the kernel: `python -c <boot> <proto-fd>` (see the server's launcher)."""
    proto_fd = int(sys.argv[1])
    sys.argv = [""]
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # user code reading stdin gets EOF, never the protocol
    os.close(devnull)
    channel = Channel(proto_fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    output = OutputBuffer(channel)
    sys.stdout = OutStream(output, "stdout", 1)
    sys.stderr = OutStream(output, "stderr", 2)
    # Agg for every process (subprocesses cannot import this package); the kernel itself
    # switches to its publishing backend as soon as matplotlib is imported.
    os.environ["MPLBACKEND"] = "Agg"
    builtins.__import__ = _MatplotlibHook(builtins.__import__, f"module://{__package__}.mplbackend")
    kernel = Kernel(channel)
    richdisplay.set_publisher(kernel.publish)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        channel.interrupt()

    signal.signal(signal.SIGINT, on_sigint)
    channel.send({"t": "ready", "pid": os.getpid()})
    for line in requests:
        request = json.loads(line)
        kernel.run(str(request["code"]), {str(k): str(v) for k, v in (request.get("env") or {}).items()})
