"""The Wasmtime tier's :class:`~soulbox.runtimes.protocol.Runtime`.

A WASI command module runs with the request body as stdin and a bounded
capture of stdout/stderr; source functions (QuickJS, MicroPython) run their
interpreter module the same way with the source as an argument, and a WASI p2
component (``runtime=component``) its ``wasi:cli/run``. Every call gets a new
Store with its own memory limit and epoch deadline; the module's InstancePre
(or the component and its linker) is shared. A function deployed with
``handler=http`` gets the HTTP handler contract of handler.py on stdin/stdout.

A function with a fuel budget (``limits.fuel``) runs on a second, fuel-metering
engine made on first use, with its own linker and module cache (compiled
artifacts keyed by that engine's fingerprint). Granted ``permissions.read``
directories are checked against ``read_roots`` and preopened read-only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import wasmtime
import wasmtime.component as wc

from soulbox.core import tracing
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import FunctionSpec, Handler, InvocationError, Outcome, Runtime, Tier

from ..protocol import Output, RunResult
from ..singleflight import SingleFlight
from . import components, cpython
from .engine import WasmEngine
from .execute import execute
from .grants import GrantRefused, resolve_read_grants
from .guests import Entry, Interpreter, define_host_imports, interpreter, source_text
from .handler import envelope_limit, finish, request_document
from .modules import CompiledStore, FetchArtifact, Kind, ModuleCache, Prepared

SOURCE_CACHE_SIZE = 256

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Engine:
    """An engine with what is compiled for it: a linker and a module cache."""

    wasm: WasmEngine
    linker: wasmtime.Linker
    modules: ModuleCache


def _make_engine(cache_dir: Path, *, tick_ms: int, fuel: bool, module_cache_size: int) -> _Engine:
    wasm = WasmEngine(tick_ms=tick_ms, fuel=fuel)
    linker = wasmtime.Linker(wasm.engine)
    linker.define_wasi()
    define_host_imports(linker)
    component_linker = components.make_linker(wasm.engine)
    cpython_linker = cpython.make_linker(wasm.engine)
    preparers: dict[Kind, Callable[[wc.Component], Prepared]] = {
        "component": lambda c: components.prepare(c, component_linker, wasm.engine),
        "cpython": lambda c: cpython.prepare(c, cpython_linker),
    }
    modules = ModuleCache(wasm, linker, cache_dir, size=module_cache_size, preparers=preparers)
    return _Engine(wasm, linker, modules)


class WasmRuntime:
    tier = Tier.WASM

    def __init__(
        self,
        fetch_artifact: FetchArtifact,
        *,
        cache_dir: Path,
        concurrency: int,
        module_cache_size: int = 256,
        tick_ms: int = 10,
        shared: CompiledStore | None = None,
        read_roots: Sequence[Path] = (),
        warm_cpython: bool = False,
    ) -> None:
        self._fetch = fetch_artifact
        self._shared = shared
        self._cache_dir = cache_dir
        self._tick_ms = tick_ms
        self._module_cache_size = module_cache_size
        self._read_roots = tuple(read_roots)
        self._warm_cpython = warm_cpython  # its compile takes ~15 s of CPU: only where asked
        self._plain = _make_engine(cache_dir, tick_ms=tick_ms, fuel=False, module_cache_size=module_cache_size)
        self._fueled: _Engine | None = None
        self.modules = self._plain.modules
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wasm")
        self._loading: SingleFlight[str, Prepared] = SingleFlight()
        self._sources: OrderedDict[str, str] = OrderedDict()
        self._closed = False

    @property
    def fuel_modules(self) -> ModuleCache | None:
        """The fuel engine's module cache, once a function with a fuel budget has run."""
        return self._fueled.modules if self._fueled is not None else None

    def _engine_for(self, spec: FunctionSpec) -> _Engine:
        if spec.limits.fuel is None:
            return self._plain
        if self._fueled is None:  # only the event loop's thread gets here: no race
            self._fueled = _make_engine(
                self._cache_dir, tick_ms=self._tick_ms, fuel=True, module_cache_size=self._module_cache_size
            )
        return self._fueled

    async def _instance_pre(
        self, engine: _Engine, digest: str, load: Callable[[], Awaitable[bytes]], *, kind: Kind = "module"
    ) -> Prepared:
        pre = engine.modules.lookup(digest)
        tracing.set_attribute("soulbox.cold_start", pre is None)  # compiled (or loaded) for this run
        if pre is not None:
            return pre
        # Keyed by the compiled artifact's name: the same module loads once per engine.
        return await self._loading.run(
            engine.modules.key(digest), lambda: self._load(engine.modules, digest, load, kind=kind)
        )

    async def _load(
        self, modules: ModuleCache, digest: str, load: Callable[[], Awaitable[bytes]], *, kind: Kind
    ) -> Prepared:
        loop = asyncio.get_running_loop()
        pre = await loop.run_in_executor(self._pool, lambda: modules.load_compiled(digest, kind=kind))
        if pre is None and self._shared is not None:
            shared = await self._shared.get(modules.key(digest))
            if shared is not None:
                pre = await loop.run_in_executor(self._pool, lambda: modules.adopt(digest, shared, kind=kind))
        if pre is None:
            data = await load()
            fresh, compiled = await loop.run_in_executor(self._pool, lambda: modules.compile(digest, data, kind=kind))
            if self._shared is not None:
                await self._shared.put(modules.key(digest), compiled)
            pre = fresh
        return pre

    async def _source(self, digest: str) -> str:
        source = self._sources.get(digest)
        if source is None:
            source = source_text(await self._fetch(digest))
            self._sources[digest] = source
            while len(self._sources) > SOURCE_CACHE_SIZE:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(digest)
        return source

    async def run(self, spec: FunctionSpec, input: bytes) -> RunResult:
        http = spec.handler is Handler.HTTP
        try:
            read_dirs = resolve_read_grants(spec.permissions.read, self._read_roots)
            if http:
                input = request_document(input)
        except (GrantRefused, SchemaError) as exc:
            # A grant accepted at deploy but not allowed (or absent) on this worker, or a request
            # envelope that does not decode: a failure of this invocation, not of the worker.
            reason = "grant_refused" if isinstance(exc, GrantRefused) else "bad_request"
            error = InvocationError(kind=reason, message=exc.message)
            return RunResult.captured(
                Outcome.FUNCTION_ERROR, Output(0), Output(0), exit_code=None, duration_ms=0.0, error=error
            )
        engine = self._engine_for(spec)
        guest = interpreter(spec.runtime)
        argv: list[str]
        entry: Entry
        oom_markers: tuple[str, ...]
        if guest is None:
            component = spec.runtime is Runtime.COMPONENT
            pre = await self._instance_pre(
                engine, spec.artifact, lambda: self._fetch(spec.artifact), kind="component" if component else "module"
            )
            argv, entry, oom_markers = [spec.name], "component" if component else "start", ()
        else:

            async def interpreter_bytes() -> bytes:
                return guest.module_bytes

            pre = await self._instance_pre(
                engine, guest.digest, interpreter_bytes, kind="cpython" if guest.entry == "cpython" else "module"
            )
            source = await self._source(spec.artifact)
            argv, entry, oom_markers = (
                guest.argv(source, memory_mb=spec.limits.memory_mb, http=http),
                guest.entry,
                guest.oom_markers,
            )
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._pool,
            lambda: execute(
                engine.wasm,
                pre,
                argv=argv,
                entry=entry,
                input=input,
                limits=spec.limits,
                oom_markers=oom_markers,
                env=spec.env,
                read_dirs=read_dirs,
                stdout_limit=envelope_limit(spec.limits.max_output_bytes) if http else None,
            ),
        )
        return finish(result, spec.limits.max_output_bytes) if http else result

    async def warm_up(self) -> None:
        """Have every interpreter compiled (or fetched) before the first source function needs it."""
        for runtime in Runtime:
            guest = interpreter(runtime)
            if guest is None or (guest.entry == "cpython" and not self._warm_cpython):
                continue

            async def module_bytes(guest: Interpreter = guest) -> bytes:
                return guest.module_bytes

            try:
                kind: Kind = "cpython" if guest.entry == "cpython" else "module"
                await self._instance_pre(self._plain, guest.digest, module_bytes, kind=kind)
            except Exception as exc:  # it will be compiled on first use instead
                log.warning("wasm.warm_up_failed", runtime=runtime.value, error=repr(exc))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._plain.wasm.close()
        if self._fueled is not None:
            self._fueled.wasm.close()
