"""Deploy-time checks of a WASI module, without compiling it."""

from __future__ import annotations

import functools

import wasmtime

from soulbox.core.errors import InvalidModule

WASI_MODULES = frozenset({"wasi_snapshot_preview1"})


@functools.cache
def _validation_engine() -> wasmtime.Engine:
    return wasmtime.Engine()


def validate_module(data: bytes) -> None:
    """Raise :class:`InvalidModule` unless ``data`` is a runnable WASI command module."""
    if not data.startswith(b"\0asm"):
        raise InvalidModule("not a WebAssembly module (missing the \\0asm magic)")
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
