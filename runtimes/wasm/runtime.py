"""The Wasmtime tier's :class:`~soulbox.runtimes.protocol.Runtime`.

A WASI command module runs with the request body as stdin and a bounded
capture of stdout/stderr; source functions (QuickJS, MicroPython) run their
interpreter module the same way with the source as an argument. Every call
gets a new Store with its own memory limit and epoch deadline; the module's
InstancePre is shared.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import wasmtime

from soulbox.core.logging import get_logger
from soulbox.core.schemas import FunctionSpec, Runtime, Tier

from ..protocol import RunResult
from ..singleflight import SingleFlight
from .engine import WasmEngine
from .execute import execute
from .guests import Entry, Interpreter, define_host_imports, interpreter, source_text
from .modules import CompiledStore, FetchArtifact, ModuleCache

SOURCE_CACHE_SIZE = 256

log = get_logger(__name__)


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
    ) -> None:
        self._fetch = fetch_artifact
        self._shared = shared
        self.engine = WasmEngine(tick_ms=tick_ms)
        self._linker = wasmtime.Linker(self.engine.engine)
        self._linker.define_wasi()
        define_host_imports(self._linker)
        self.modules = ModuleCache(self.engine, self._linker, cache_dir, size=module_cache_size)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wasm")
        self._loading: SingleFlight[str, wasmtime.InstancePre] = SingleFlight()
        self._sources: OrderedDict[str, str] = OrderedDict()
        self._closed = False

    async def _instance_pre(self, digest: str, load: Callable[[], Awaitable[bytes]]) -> wasmtime.InstancePre:
        pre = self.modules.lookup(digest)
        if pre is not None:
            return pre
        return await self._loading.run(digest, lambda: self._load(digest, load))

    async def _load(self, digest: str, load: Callable[[], Awaitable[bytes]]) -> wasmtime.InstancePre:
        loop = asyncio.get_running_loop()
        pre = await loop.run_in_executor(self._pool, self.modules.load_compiled, digest)
        if pre is None and self._shared is not None:
            shared = await self._shared.get(self.modules.key(digest))
            if shared is not None:
                pre = await loop.run_in_executor(self._pool, self.modules.adopt, digest, shared)
        if pre is None:
            data = await load()
            fresh, compiled = await loop.run_in_executor(self._pool, self.modules.compile, digest, data)
            if self._shared is not None:
                await self._shared.put(self.modules.key(digest), compiled)
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
        guest = interpreter(spec.runtime)
        argv: list[str]
        entry: Entry
        oom_markers: tuple[str, ...]
        if guest is None:
            pre = await self._instance_pre(spec.artifact, lambda: self._fetch(spec.artifact))
            argv, entry, oom_markers = [spec.name], "start", ()
        else:

            async def interpreter_bytes() -> bytes:
                return guest.module_bytes

            pre = await self._instance_pre(guest.digest, interpreter_bytes)
            source = await self._source(spec.artifact)
            argv, entry, oom_markers = (
                guest.argv(source, memory_mb=spec.limits.memory_mb),
                guest.entry,
                guest.oom_markers,
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool,
            lambda: execute(
                self.engine,
                pre,
                argv=argv,
                entry=entry,
                input=input,
                limits=spec.limits,
                oom_markers=oom_markers,
                env=spec.env,
            ),
        )

    async def warm_up(self) -> None:
        """Have every interpreter compiled (or fetched) before the first source function needs it."""
        for runtime in Runtime:
            guest = interpreter(runtime)
            if guest is None:
                continue

            async def module_bytes(guest: Interpreter = guest) -> bytes:
                return guest.module_bytes

            try:
                await self._instance_pre(guest.digest, module_bytes)
            except Exception as exc:  # it will be compiled on first use instead
                log.warning("wasm.warm_up_failed", runtime=runtime.value, error=repr(exc))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()
