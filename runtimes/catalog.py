"""Which runtimes exist, which tiers run them, and how each is checked at deploy.

The one table the gateway (deploy-time validation) and the scheduler (tier
choice) read. A tier adds its runtimes here when it lands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from soulbox.core.schemas import Runtime, Tier

from .js.source import validate_source
from .linux.validate import validate_script
from .wasm.validate import (
    validate_component,
    validate_cpython,
    validate_javascript,
    validate_micropython,
    validate_module,
)


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    runtime: Runtime
    tiers: tuple[Tier, ...]
    """The tiers that can run it, in order of preference."""
    validate: Callable[[bytes], None]
    """Deploy-time check of the uploaded artifact; raises InvalidRequest (or a subclass)."""
    description: str


CATALOG: Mapping[Runtime, RuntimeInfo] = {
    Runtime.WASI: RuntimeInfo(
        Runtime.WASI, (Tier.WASM,), validate_module, "a WASI preview-1 command module: stdin in, stdout out"
    ),
    Runtime.COMPONENT: RuntimeInfo(
        Runtime.COMPONENT,
        (Tier.WASM,),
        validate_component,
        "a WASI preview-2 component exporting wasi:cli/run: stdin in, stdout out",
    ),
    Runtime.QUICKJS: RuntimeInfo(
        Runtime.QUICKJS, (Tier.WASM,), validate_javascript, "a JavaScript script run by QuickJS in Wasmtime"
    ),
    Runtime.MICROPYTHON: RuntimeInfo(
        Runtime.MICROPYTHON, (Tier.WASM,), validate_micropython, "a Python script run by MicroPython in Wasmtime"
    ),
    Runtime.CPYTHON: RuntimeInfo(
        Runtime.CPYTHON,
        (Tier.WASM,),
        validate_cpython,
        "a Python 3.14 script run by CPython compiled to a WASI component, in Wasmtime (frozen stdlib subset)",
    ),
    Runtime.BUN: RuntimeInfo(
        Runtime.BUN,
        (Tier.JS,),
        partial(validate_source, "bun"),
        "a JS/TS module run by Bun: `export default { fetch(request, env, ctx) }`, or a script (stdin -> stdout)",
    ),
    Runtime.DENO: RuntimeInfo(
        Runtime.DENO,
        (Tier.JS,),
        partial(validate_source, "deno"),
        "a JS/TS module run by Deno, with no fs/net/env/run access unless granted",
    ),
    Runtime.PYTHON: RuntimeInfo(
        Runtime.PYTHON, (Tier.LINUX,), validate_script, "a Python 3 script in a namespace sandbox: stdin in, stdout out"
    ),
    Runtime.SHELL: RuntimeInfo(
        Runtime.SHELL, (Tier.LINUX,), validate_script, "a bash script in a namespace sandbox: stdin in, stdout out"
    ),
    Runtime.NODE: RuntimeInfo(
        Runtime.NODE, (Tier.LINUX,), validate_script, "a JavaScript file run by node in a namespace sandbox"
    ),
}


def info(runtime: Runtime) -> RuntimeInfo:
    return CATALOG[runtime]
