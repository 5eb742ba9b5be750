"""Full CPython on the Wasmtime tier: the CPython 3.14 component of ``hyperlight-sandbox-python-guest``.

The component does not export ``wasi:cli/run``: it exports
``hyperlight:sandbox/executor.run(code) -> {stdout, stderr, exit-code}``
(what the code printed is captured inside the guest and returned), and
imports WASI p2, ``wasi:http`` and a host ``hyperlight:sandbox/tools.dispatch``.
It gets:

- WASI p2 as any component (``components.py``): stdin, env, read-only grants,
  no network (``wasi:sockets`` is never granted);
- Wasmtime's own ``wasi:http`` — its ``types`` share ``wasi:io`` stream
  resources that only Wasmtime's p2 host can define, so they cannot be
  replaced — with ``outgoing-handler.handle``, the only function that sends a
  request, shadowed by one that answers ``HTTP-request-denied``. The store
  still needs ``Store.set_wasi_http()``: without it the types' functions abort
  the worker process;
- ``tools.dispatch`` answering an error for every tool.

Only the standard library frozen into the component's snapshot is there
(``json``, ``re``, ``random``, ``dataclasses``, ``typing``, ``math``, ``zlib``,
…; not ``datetime``, ``hashlib``, ``base64``, ``struct``, ``urllib``): the
package ships no stdlib directory. Its compile takes seconds (~15 s), so the
compiled form is cached and shared like any module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import wasmtime
import wasmtime.component as wc

from soulbox.core.errors import InvalidModule

PACKAGE = "hyperlight-sandbox-python-guest"
WASM_FILE = "python-sandbox.wasm"
_EXECUTOR = "hyperlight:sandbox/executor"
_OUTGOING = "wasi:http/outgoing-handler@0.2.0"
_TOOLS = "hyperlight:sandbox/tools"


@dataclass(frozen=True, slots=True)
class CPythonPre:
    """The compiled CPython component, its linker and where ``executor.run`` is."""

    component: wc.Component
    linker: wc.Linker
    run_index: wc.ExportIndex

    def instantiate(self, store: wasmtime.Store) -> wc.Instance:
        store.set_wasi_http()  # the types' context; no request can be sent (see make_linker)
        return self.linker.instantiate(store, self.component)

    def run(self, store: wasmtime.Store, instance: wc.Instance, code: str) -> tuple[str, str, int]:
        """Run ``code`` as ``__main__``: (stdout, stderr, exit code) as the guest captured them."""
        run = instance.get_func(store, self.run_index)
        assert run is not None, "checked when the component was prepared"
        record: Any = run(store, code)
        return str(record.stdout), str(record.stderr), int(getattr(record, "exit-code"))


def _deny_request(store: object, request: object, options: object) -> wc.Variant:
    # result<future-incoming-response, error-code>: its two cases differ in Python type, so
    # wasmtime-py takes the error-code variant itself as the `err` case (no outer tag).
    return wc.Variant("HTTP-request-denied", None)


def _no_tools(store: object, name: str, args_json: str) -> wc.Variant:
    return wc.Variant("err", f"no host tools are granted (asked for {name!r})")


def make_linker(engine: wasmtime.Engine) -> wc.Linker:
    linker = wc.Linker(engine)
    linker.add_wasip2()
    linker.add_wasi_http()
    linker.allow_shadowing = True  # only to replace outgoing-handler.handle below
    with linker.root() as root:
        with root.add_instance(_OUTGOING) as outgoing:
            outgoing.add_func("handle", _deny_request)
        with root.add_instance(_TOOLS) as tools:
            tools.add_func("dispatch", _no_tools)
    return linker


def prepare(component: wc.Component, linker: wc.Linker) -> CPythonPre:
    executor = component.get_export_index(_EXECUTOR)
    run = component.get_export_index("run", executor) if executor is not None else None
    if run is None:
        raise InvalidModule(f"the CPython component has no {_EXECUTOR}.run")
    return CPythonPre(component, linker, run)
