"""WASI preview-2 components: a component exporting ``wasi:cli/run``, run like a command module.

wasmtime-py 50 has the component model (``wasmtime.component``) with
Wasmtime's own WASI p2 host (``Linker.add_wasip2``) configured by the same
``WasiConfig`` as preview 1: argv, env, stdin, captured stdout/stderr,
read-only preopens, no network (it is never inherited). A component may
import only WASI p2's CLI world (``wasi:cli``, ``wasi:io``, ``wasi:clocks``,
``wasi:filesystem``, ``wasi:random``, ``wasi:sockets``; checked at deploy):
``wasi:http`` is refused because wasmtime-py can only link Wasmtime's
implementation, which either sends requests anywhere (``Store.set_wasi_http``)
or aborts the worker process when called without it.

wasmtime-py has no component ``InstancePre``: a call instantiates through the
shared linker (type-checking the imports again, well under a millisecond for a
small component). ``wasi:cli/run`` returning ``err`` is exit code 1, like
``wasi:cli/exit`` with an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import wasmtime
import wasmtime.component as wc

from soulbox.core.errors import InvalidModule

COMPONENT_MAGIC = b"\0asm\x0d\x00\x01\x00"
RUN_EXPORT = re.compile(r"^wasi:cli/run@0\.2\.\d+$")
ALLOWED_IMPORT = re.compile(r"^wasi:(cli|io|clocks|filesystem|random|sockets)/[a-z-]+@0\.2\.\d+$")


@dataclass(frozen=True, slots=True)
class ComponentPre:
    """A compiled component, the linker that instantiates it and where its ``run`` is."""

    component: wc.Component
    linker: wc.Linker
    run_index: wc.ExportIndex

    def instantiate(self, store: wasmtime.Store) -> wc.Instance:
        return self.linker.instantiate(store, self.component)

    def run(self, store: wasmtime.Store, instance: wc.Instance) -> bool:
        """Call ``wasi:cli/run``; True if it returned ``ok``."""
        run = instance.get_func(store, self.run_index)
        assert run is not None, "checked when the component was prepared"
        result = run(store)
        return not (isinstance(result, wc.Variant) and result.tag == "err")


def make_linker(engine: wasmtime.Engine) -> wc.Linker:
    linker = wc.Linker(engine)
    linker.add_wasip2()
    return linker


def run_export(component: wc.Component, engine: wasmtime.Engine) -> str:
    """The name of the component's ``wasi:cli/run`` export; InvalidModule without one."""
    for name in component.type.exports(engine):
        if RUN_EXPORT.match(name):
            return name
    raise InvalidModule("component does not export wasi:cli/run@0.2 (build it as a WASI p2 command)")


def prepare(component: wc.Component, linker: wc.Linker, engine: wasmtime.Engine) -> ComponentPre:
    interface = component.get_export_index(run_export(component, engine))
    run = component.get_export_index("run", interface) if interface is not None else None
    if run is None:
        raise InvalidModule("component's wasi:cli/run has no `run` function")
    return ComponentPre(component, linker, run)


def check_imports(component: wc.Component, engine: wasmtime.Engine) -> None:
    """InvalidModule unless every import is part of WASI p2's CLI world."""
    unknown = sorted(name for name in component.type.imports(engine) if not ALLOWED_IMPORT.match(name))
    if unknown:
        raise InvalidModule(
            "component imports interfaces SoulBox does not provide: "
            + ", ".join(unknown)
            + " (only wasi:cli, io, clocks, filesystem, random and sockets @0.2; no wasi:http)"
        )
