"""The Wasmtime tier's :class:`~soulbox.runtimes.protocol.Runtime`.

A WASI command module runs with the request body as stdin and a bounded
capture of stdout/stderr. Every call gets a new Store with its own memory
limit and epoch deadline; the module's InstancePre is shared.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import wasmtime

from soulbox.core.schemas import FunctionSpec, InvocationError, Outcome, Tier

from ..protocol import Output, RunResult
from .engine import WasmEngine
from .modules import FetchArtifact, ModuleCache

MIB = 1024 * 1024
WASM_PAGE = 64 * 1024


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
    ) -> None:
        self._fetch = fetch_artifact
        self.engine = WasmEngine(tick_ms=tick_ms)
        self._linker = wasmtime.Linker(self.engine.engine)
        self._linker.define_wasi()
        self.modules = ModuleCache(self.engine, self._linker, cache_dir, size=module_cache_size)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wasm")
        self._loading: dict[str, asyncio.Future[wasmtime.InstancePre]] = {}
        self._closed = False

    async def _instance_pre(self, digest: str) -> wasmtime.InstancePre:
        pre = self.modules.lookup(digest)
        if pre is not None:
            return pre
        pending = self._loading.get(digest)
        if pending is not None:  # another invocation is loading the same module
            return await asyncio.shield(pending)
        future: asyncio.Future[wasmtime.InstancePre] = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            loop = asyncio.get_running_loop()
            pre = await loop.run_in_executor(self._pool, self.modules.load_compiled, digest)
            if pre is None:
                data = await self._fetch(digest)
                pre = await loop.run_in_executor(self._pool, self.modules.compile, digest, data)
            future.set_result(pre)
            return pre
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._loading[digest]

    async def run(self, spec: FunctionSpec, input: bytes) -> RunResult:
        pre = await self._instance_pre(spec.artifact)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_sync, pre, spec, input)

    def _run_sync(self, pre: wasmtime.InstancePre, spec: FunctionSpec, input: bytes) -> RunResult:
        limits = spec.limits
        stdout = Output(limits.max_output_bytes)
        stderr = Output(limits.max_output_bytes)
        store = wasmtime.Store(self.engine.engine)
        memory_limit = limits.memory_mb * MIB
        store.set_limits(memory_size=memory_limit, instances=4, tables=4, memories=1, table_elements=100_000)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [spec.name]
        stdin_fd = None
        if input:
            # An anonymous in-memory file: no disk, nothing left behind.
            stdin_fd = os.memfd_create("soulbox-stdin", os.MFD_CLOEXEC)
            os.write(stdin_fd, input)
            wasi.stdin_file = f"/proc/self/fd/{stdin_fd}"
        wasi.stdout_custom = stdout.write
        wasi.stderr_custom = stderr.write
        store.set_wasi(wasi)
        if stdin_fd is not None:
            os.close(stdin_fd)
        store.set_epoch_deadline(self.engine.deadline_ticks(limits.timeout_ms))

        outcome: Outcome = Outcome.SUCCESS
        exit_code: int | None = 0
        error: InvocationError | None = None
        instance = None
        started = time.perf_counter()
        try:
            instance = pre.instantiate(store)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
            if exit_code != 0:
                outcome = Outcome.FUNCTION_ERROR
                error = InvocationError(kind="exit", message=f"exited with code {exit_code}")
        except wasmtime.Trap as exc:
            exit_code = None
            if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
                outcome = Outcome.TIMEOUT
                error = InvocationError(kind="timeout", message=f"deadline of {limits.timeout_ms} ms exceeded")
            else:
                outcome = Outcome.FUNCTION_ERROR
                error = InvocationError(kind="trap", message=exc.message)
        except wasmtime.WasmtimeError as exc:
            exit_code = None
            message = str(exc)
            if instance is None and "memory" in message and ("limit" in message or "minimum" in message):
                outcome = Outcome.OUT_OF_MEMORY
                error = InvocationError(kind="out_of_memory", message=message)
            else:
                outcome = Outcome.FUNCTION_ERROR
                error = InvocationError(kind="instantiate", message=message)
        duration_ms = (time.perf_counter() - started) * 1000

        peak = None
        if instance is not None:
            memory = instance.exports(store).get("memory")
            if isinstance(memory, wasmtime.Memory):
                peak = memory.data_len(store)
        if (
            outcome is Outcome.FUNCTION_ERROR
            and peak is not None
            and peak + WASM_PAGE > memory_limit
            and error is not None
            and error.kind in ("trap", "exit")
        ):
            # The guest failed with its memory at the limit: a refused memory.grow.
            outcome = Outcome.OUT_OF_MEMORY
            error = InvocationError(
                kind="out_of_memory",
                message=f"memory limit of {limits.memory_mb} MiB reached ({error.message})",
            )
        return RunResult(
            outcome=outcome,
            exit_code=exit_code,
            stdout=stdout.getvalue(),
            stderr=stderr.getvalue(),
            stdout_bytes=stdout.size,
            stderr_bytes=stderr.size,
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            duration_ms=duration_ms,
            peak_memory_bytes=peak,
            error=error,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()
