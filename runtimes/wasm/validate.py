"""Deploy-time checks: a WASI module links and starts; a source function compiles."""

from __future__ import annotations

import functools

import wasmtime
import wasmtime.component as wc

from soulbox.core.errors import InvalidModule, InvalidRequest
from soulbox.core.schemas import Limits, Runtime

from .components import COMPONENT_MAGIC, check_imports, run_export
from .engine import WasmEngine
from .execute import execute
from .guests import define_host_imports, interpreter, source_text

WASI_MODULES = frozenset({"wasi_snapshot_preview1"})


@functools.cache
def _validation_engine() -> wasmtime.Engine:
    return wasmtime.Engine()


def validate_module(data: bytes) -> None:
    """Raise :class:`InvalidModule` unless ``data`` is a runnable WASI command module."""
    if not data.startswith(b"\0asm"):
        raise InvalidModule("not a WebAssembly module (missing the \\0asm magic)")
    if data.startswith(COMPONENT_MAGIC):
        raise InvalidModule("this is a WASI preview-2 component: deploy it with runtime=component")
    engine = _validation_engine()
    try:
        wasmtime.Module.validate(engine, data)
        module = wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise InvalidModule(f"invalid WebAssembly module: {exc}") from exc
    unknown = sorted(f"{imp.module}.{imp.name}" for imp in module.imports if imp.module not in WASI_MODULES)
    if unknown:
        raise InvalidModule(f"module imports functions SoulBox does not provide: {', '.join(unknown)}")
    if "_start" not in {exp.name for exp in module.exports}:
        raise InvalidModule("module has no `_start` export (build it as a WASI command)")


def validate_component(data: bytes) -> None:
    """Raise :class:`InvalidModule` unless ``data`` is a WASI p2 component SoulBox can run (``wasi:cli/run``)."""
    if not data.startswith(COMPONENT_MAGIC):
        hint = " (this is a core module: deploy it as runtime wasi)" if data.startswith(b"\0asm\x01\0\0\0") else ""
        raise InvalidModule(f"not a WebAssembly component{hint}")
    engine = _validation_engine()
    try:
        component = wc.Component(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise InvalidModule(f"invalid WebAssembly component: {exc}") from exc
    check_imports(component, engine)
    run_export(component, engine)


# Programs that compile (not run) the source arriving on stdin, and say where it is wrong.
_JS_CHECK = (
    "try { std.evalScript(std.in.readAsString(), {compile_only: true}); }"
    " catch (e) { const at = /<evalScript>:(\\d+):(\\d+)/.exec(e.stack || '');"
    " std.err.puts(String(e) + (at ? ` (line ${at[1]}, column ${at[2]})` : '')); std.exit(1); }"
)
_PY_CHECK = (
    "import sys\n"
    "try:\n"
    "    compile(sys.stdin.read(), 'function.py', 'exec')\n"
    "except SyntaxError as e:\n"
    "    sys.print_exception(e, sys.stderr)\n"
    "    sys.exit(1)\n"
)
_CHECK_LIMITS = Limits(memory_mb=64, timeout_ms=5000, max_output_bytes=8192)


@functools.cache
def _checker(runtime: Runtime) -> tuple[WasmEngine, wasmtime.InstancePre]:
    guest = interpreter(runtime)
    assert guest is not None
    engine = WasmEngine()
    linker = wasmtime.Linker(engine.engine)
    linker.define_wasi()
    define_host_imports(linker)
    return engine, linker.instantiate_pre(wasmtime.Module(engine.engine, guest.module_bytes))


def _check_source(runtime: Runtime, checker: str, code: bytes) -> None:
    source_text(code)
    guest = interpreter(runtime)
    assert guest is not None
    engine, pre = _checker(runtime)
    result = execute(
        engine,
        pre,
        argv=guest.argv(checker, memory_mb=_CHECK_LIMITS.memory_mb),
        entry=guest.entry,
        input=code,
        limits=_CHECK_LIMITS,
    )
    if result.exit_code != 0:
        detail = result.stderr.decode("utf-8", errors="replace").strip()
        lines = [line.strip() for line in detail.splitlines() if line.strip() and "<stdin>" not in line]
        message = "; ".join(line for line in lines if not line.startswith("Traceback")) or "does not compile"
        raise InvalidRequest(f"{runtime.value} source does not compile: {message}")


def validate_javascript(code: bytes) -> None:
    """Raise InvalidRequest (with line and column) unless ``code`` is a JavaScript script QuickJS compiles."""
    _check_source(Runtime.QUICKJS, _JS_CHECK, code)


def validate_cpython(code: bytes) -> None:
    """Raise InvalidRequest unless ``code`` is UTF-8 text without NUL bytes.

    Syntax is not checked at deploy: the only Python 3.14 parser at hand is the guest's,
    whose compile takes seconds; a syntax error is the first call's ``exception``.
    """
    source_text(code)


def validate_micropython(code: bytes) -> None:
    """Raise InvalidRequest (with the line) unless ``code`` is Python MicroPython compiles."""
    _check_source(Runtime.MICROPYTHON, _PY_CHECK, code)
