"""The JS tier's :class:`~soulbox.runtimes.protocol.Runtime`: Bun and Deno.

``run`` finds the function's engine (by ``spec.runtime``), its module
(fetched once, parsed once for its :class:`~.config.Mode`) and a process
bound to it (a warm one from the pool, or a new one), then serves the
invocation there. The wall clock starts when a slot is taken and covers a
cold start: a module that loads for longer than the deadline times out.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from soulbox.core.errors import InvalidRequest, SchemaError, Unavailable
from soulbox.core.logging import get_logger
from soulbox.core.schemas import FunctionSpec, InvocationError, Limits, Outcome, Runtime, Tier

from ..protocol import Output, OutputSink, RunResult
from .config import TIER, FunctionConfig, Mode, config_from_spec
from .engines import SHIM, Engine
from .http import HttpRequest
from .invoke import MIB, breach_error, crash_error, finish, reported_error, run_fetch, run_script
from .modules import FetchArtifact, Module, ModuleStore
from .pool import PoolKey, ProcessPool
from .process import Breach, JsProcess, socket_path
from .sandbox import CACHE_DIR, CODE_DIR, RUN_DIR, JsSandbox

log = get_logger(__name__)

MAX_SOCKET_DIR = 80  # + "/<16 hex>.sock" stays under the 108-byte sun_path


class JsRuntime:
    tier: Tier = TIER

    def __init__(
        self,
        fetch_artifact: FetchArtifact,
        *,
        engines: Mapping[Runtime, Engine],
        work_dir: Path,
        concurrency: int,
        configure: Callable[[FunctionSpec], FunctionConfig] = config_from_spec,
        max_idle: int = 64,
        idle_ttl_s: float = 300.0,
        start_timeout_s: float = 10.0,
        spare_scripts: bool = True,
        poll_ms: float = 5.0,
        cgroup_parent: Path | None = None,
        sandbox: JsSandbox | None = None,
    ) -> None:
        """``sandbox``: where every process runs (owned: closed with the runtime); None runs them bare."""
        work_dir = work_dir.resolve()  # the shim and Deno's permissions need absolute paths
        self.engines = dict(engines)
        self.modules = ModuleStore(fetch_artifact, work_dir / "modules")
        self.pool = ProcessPool(max_idle=max_idle, idle_ttl_s=idle_ttl_s)
        self._configure = configure
        self._run_dir = work_dir / "run"
        self._own_run_dir = len(str(self._run_dir)) > MAX_SOCKET_DIR
        if self._own_run_dir:  # a unix socket path must fit in 108 bytes
            self._run_dir = Path(tempfile.mkdtemp(prefix="soulbox-js-"))
        self._run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cache_dir = work_dir / "cache"
        self._slots = asyncio.Semaphore(concurrency)
        self._start_timeout_s = start_timeout_s
        self._spare_scripts = spare_scripts
        self._poll_s = poll_ms / 1000
        self._cgroup_parent = cgroup_parent  # see cgroup.find_parent; None: the RSS watchdog alone
        self.sandbox = sandbox
        self._seq = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.started = 0  # processes spawned (cold starts and spares), for tests and metrics
        self.reused = 0  # invocations served by a process that was already up

    async def run(self, spec: FunctionSpec, input: bytes) -> RunResult:
        return await self.run_streaming(spec, input, None)

    async def run_streaming(self, spec: FunctionSpec, input: bytes, sink: OutputSink | None) -> RunResult:
        """``run``, handing output to ``sink`` as the process writes it: a script's stdout and stderr,
        a fetch handler's stray writes and (at its end) console logs as stderr; never a Response body."""
        engine = self.engines.get(spec.runtime)
        if engine is None:
            raise Unavailable(f"runtime {spec.runtime!r} is not installed on this worker")
        config = self._configure(spec)
        try:
            module = await self.modules.get(engine, spec.artifact)
        except InvalidRequest as exc:  # the stored source does not parse
            return _failed(time.perf_counter(), "load", exc.message)
        key = PoolKey(
            spec.runtime, spec.tenant, spec.name, spec.artifact, config.fingerprint, spec.limits.memory_mb, module.mode
        )
        async with self._slots:
            result = await self._serve(engine, module, key, config, spec.limits, input, sink)
        if key.mode is Mode.SCRIPT and self._spare_scripts:
            self._prepare_spare(engine, module, key, config, spec.limits)
        return result

    async def _serve(
        self,
        engine: Engine,
        module: Module,
        key: PoolKey,
        config: FunctionConfig,
        limits: Limits,
        input: bytes,
        sink: OutputSink | None,
    ) -> RunResult:
        started = time.perf_counter()
        request = None
        if key.mode is Mode.FETCH:
            try:
                request = HttpRequest.decode(input)
            except SchemaError as exc:
                return _failed(started, "bad_input", exc.message)
        proc = self.pool.take(key)
        if proc is not None:
            self.reused += 1
        else:
            timeout_s = limits.timeout_ms / 1000  # the deadline covers a cold start
            proc, failure = await self._start(engine, module, key, config, limits, timeout_s, started, sink)
            if failure is not None:
                return failure
        reusable = False
        try:
            if request is None:
                return await run_script(proc, input, limits, started, sink)
            result, reusable = await run_fetch(proc, request, limits, started, next(self._seq), sink)
            return result
        finally:
            if reusable and not self._closed:
                self.pool.put(key, proc)
            else:
                self.pool.discard(proc)

    async def _start(
        self,
        engine: Engine,
        module: Module,
        key: PoolKey,
        config: FunctionConfig,
        limits: Limits,
        timeout_s: float,
        started: float,
        sink: OutputSink | None = None,
    ) -> tuple[JsProcess, RunResult | None]:
        spawn = None
        if self.sandbox is None:
            sock = host_sock = socket_path(self._run_dir)
            launch = engine.launch(
                socket=sock,
                module=module.path,
                mode=key.mode,
                config=config,
                memory_mb=limits.memory_mb,
                cache_dir=self._cache_dir / engine.runtime,
            )
            argv = launch.argv
        else:
            sock = socket_path(Path(RUN_DIR))
            code = Path(CODE_DIR)
            launch = engine.launch(
                socket=sock,
                module=code / module.path.name,
                mode=key.mode,
                config=config,
                memory_mb=limits.memory_mb,
                cache_dir=Path(CACHE_DIR),
                shim=code / SHIM.name,
            )
            spawn = await self.sandbox.prepare(
                launch.argv,
                binary=engine.binary,
                files={SHIM.name: SHIM, module.path.name: module.path},
                net=config.permissions.net,
                write_paths=config.permissions.write,
                tmpfs_bytes=limits.memory_mb * MIB,
            )
            argv = spawn.argv
            host_sock = spawn.run_dir / sock.name
        self.started += 1
        proc, ended = await JsProcess.start(
            argv,
            env=launch.env,
            cwd=self._run_dir,
            socket_path=host_sock,
            sandbox=spawn,
            mode=key.mode,
            bindings=config.env,
            timeout_s=timeout_s,
            memory_limit=limits.memory_mb * MIB,
            poll_s=self._poll_s,
            cgroup_parent=self._cgroup_parent,
        )
        if ended is not None and not isinstance(ended, Breach) and ended.type == "ready":
            return proc, None
        await proc.exited()
        stderr = Output(limits.max_output_bytes, sink=sink, stream="stderr")
        stderr.write(bytes(proc.stderr_tail))
        if isinstance(ended, Breach):
            outcome, error = breach_error(ended, limits)
        elif ended is None:
            outcome, error = crash_error(proc, limits)
        else:
            outcome, error = reported_error(ended, limits)
        log.info("js.start_failed", runtime=engine.runtime, function=key.function, kind=error.kind)
        self.pool.discard(proc)
        return proc, finish(outcome, started, Output(0), stderr, error=error, peak=proc.memory.peak())

    def _prepare_spare(
        self, engine: Engine, module: Module, key: PoolKey, config: FunctionConfig, limits: Limits
    ) -> None:
        """Boot the next script process in the background, so the next invocation finds it ready."""
        if self._closed or self.pool.count(key) > 0 or any(t.get_name() == repr(key) for t in self._background):
            return

        async def spare() -> None:
            proc, failure = await self._start(
                engine, module, key, config, limits, self._start_timeout_s, time.perf_counter()
            )
            if failure is None:
                self.pool.put(key, proc)

        task = asyncio.create_task(spare(), name=repr(key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop every process; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        # Spares being started finish (within start_timeout_s) and go to the closing pool.
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pool.close()
        if self.sandbox is not None:
            await self.sandbox.close()
        if self._own_run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)


def _failed(started: float, kind: str, message: str) -> RunResult:
    error = InvocationError(kind=kind, message=message)
    return finish(Outcome.FUNCTION_ERROR, started, Output(0), Output(0), error=error)
