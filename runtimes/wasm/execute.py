"""Running one instance to the end: a new Store, limits, WASI context, entry point, outcome.

Blocking (it runs guest code): call it from a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import wasmtime

from soulbox.core.schemas import InvocationError, Limits, Outcome

from ..protocol import Output, RunResult
from .components import ComponentPre
from .cpython import CPythonPre
from .engine import WasmEngine
from .guests import Entry
from .modules import Prepared

MIB = 1024 * 1024
WASM_PAGE = 64 * 1024


def execute(
    engine: WasmEngine,
    pre: Prepared,
    *,
    argv: list[str],
    entry: Entry,
    input: bytes,
    limits: Limits,
    oom_markers: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    read_dirs: Sequence[tuple[str, str]] = (),
    stdout_limit: int | None = None,
) -> RunResult:
    """Run ``pre`` in a new Store with ``limits``; ``read_dirs``: (host, guest) directories preopened read-only.

    ``engine`` must meter fuel exactly when ``limits.fuel`` is set. ``stdout_limit``: capture this
    much stdout instead of ``limits.max_output_bytes`` (an http handler's envelope; its body is capped).
    """
    assert engine.fuel == (limits.fuel is not None), "a fuel budget needs the fuel engine, and only it"
    stdout = Output(limits.max_output_bytes if stdout_limit is None else stdout_limit)
    stderr = Output(limits.max_output_bytes)
    store = wasmtime.Store(engine.engine)
    memory_limit = limits.memory_mb * MIB
    # A component is several core instances (its modules, adapter shims), each may have a memory
    # and tables; memory_size still bounds every memory of the store.
    component = entry in ("component", "cpython")
    many = 64 if component else 4
    store.set_limits(
        memory_size=memory_limit,
        instances=many,
        tables=many,
        memories=many if component else 1,
        table_elements=100_000,
    )
    wasi = wasmtime.WasiConfig()
    wasi.argv = argv if entry in ("start", "component") else argv[:1]
    if env:
        wasi.env = list(env.items())  # only the function's own bindings: nothing of the host
    if input:
        # An anonymous in-memory file: no disk, nothing left behind (opened by WASI right here).
        stdin_fd = os.memfd_create("soulbox-stdin", os.MFD_CLOEXEC)
        try:
            os.write(stdin_fd, input)
            wasi.stdin_file = f"/proc/self/fd/{stdin_fd}"
        finally:
            os.close(stdin_fd)
    for host, guest in read_dirs:
        # fs_mutable=False: read-only directory and file permissions (no create, write, rename, delete).
        wasi.preopen_dir(host, guest, fs_mutable=False)
    wasi.stdout_custom = stdout.write
    wasi.stderr_custom = stderr.write
    store.set_wasi(wasi)
    store.set_epoch_deadline(engine.deadline_ticks(limits.timeout_ms))
    if limits.fuel is not None:
        store.set_fuel(limits.fuel)

    outcome: Outcome = Outcome.SUCCESS
    exit_code: int | None = 0
    error: InvocationError | None = None
    instance = None
    component_running = False  # a component instantiated: its errors are the guest's from then on
    started = time.perf_counter()
    try:
        if isinstance(pre, CPythonPre):
            running_python = pre.instantiate(store)
            component_running = True
            out, err, code = pre.run(store, running_python, argv[1])
            stdout.write(out.encode("utf-8", errors="replace"))
            stderr.write(err.encode("utf-8", errors="replace"))
            if code != 0:
                exit_code = code
                outcome = Outcome.FUNCTION_ERROR
                tail = _tail(stderr)
                error = InvocationError(kind="exception", message=tail or f"exited with code {code}")
        elif isinstance(pre, ComponentPre):
            running = pre.instantiate(store)
            component_running = True
            if not pre.run(store, running):
                exit_code = 1
                outcome = Outcome.FUNCTION_ERROR
                tail = _tail(stderr)
                message = "wasi:cli/run returned an error" + (f": {tail}" if tail else "")
                error = InvocationError(kind="exit", message=message)
        elif entry == "qjs":
            instance = pre.instantiate(store)
            if _run_qjs(store, instance, argv) != 0:
                exit_code = 1
                outcome = Outcome.FUNCTION_ERROR
                error = InvocationError(kind="exception", message=_tail(stderr) or "uncaught exception")
        else:
            instance = pre.instantiate(store)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
    except wasmtime.ExitTrap as exc:
        exit_code = exc.code
        if exit_code != 0:
            outcome = Outcome.FUNCTION_ERROR
            tail = _tail(stderr)
            error = InvocationError(
                kind="exit", message=f"exited with code {exit_code}" + (f": {tail}" if tail else "")
            )
    except wasmtime.Trap as exc:
        exit_code = None
        if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
            outcome = Outcome.TIMEOUT
            error = InvocationError(kind="timeout", message=f"deadline of {limits.timeout_ms} ms exceeded")
        elif exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            # A CPU budget, not a deadline: the guest's own doing, so a function error of its own kind.
            outcome = Outcome.FUNCTION_ERROR
            error = InvocationError(kind="out_of_fuel", message=f"fuel budget of {limits.fuel} exhausted")
        else:
            outcome = Outcome.FUNCTION_ERROR
            error = InvocationError(kind="trap", message=exc.message)
    except wasmtime.WasmtimeError as exc:
        exit_code = None
        message = str(exc)
        trap = _trap_of(message) if component else None
        if trap == "interrupt":
            outcome = Outcome.TIMEOUT
            error = InvocationError(kind="timeout", message=f"deadline of {limits.timeout_ms} ms exceeded")
        elif trap is not None and trap.startswith("all fuel consumed"):
            outcome = Outcome.FUNCTION_ERROR
            error = InvocationError(kind="out_of_fuel", message=f"fuel budget of {limits.fuel} exhausted")
        elif trap is not None:
            outcome = Outcome.FUNCTION_ERROR
            error = InvocationError(kind="trap", message=f"wasm trap: {trap}")
        elif component_running:
            # A WASI call the host refused (e.g. a write over the stream's 4 KiB budget): the guest's fault.
            outcome = Outcome.FUNCTION_ERROR
            error = InvocationError(kind="trap", message=message.split("Caused by:")[-1].strip())
        elif instance is None and "memory" in message and ("limit" in message or "minimum" in message):
            outcome = Outcome.OUT_OF_MEMORY
            error = InvocationError(kind="out_of_memory", message=message)
        else:
            outcome = Outcome.FUNCTION_ERROR
            error = InvocationError(kind="instantiate", message=message)
    duration_ms = (time.perf_counter() - started) * 1000
    # Compiled code keeps the fuel counter in a register and stores it back at calls and
    # returns, not at an interrupt or a trap: only a run that ended (returned, exited
    # through WASI, ran out) has an exact count.
    exact = error is None or error.kind in ("exit", "exception", "out_of_fuel")
    fuel_consumed = limits.fuel - store.get_fuel() if limits.fuel is not None and exact else None

    peak = None
    if instance is not None:
        memory = instance.exports(store).get("memory")
        if isinstance(memory, wasmtime.Memory):
            peak = memory.data_len(store)
    at_limit = peak is not None and peak + WASM_PAGE > memory_limit
    said_so = error is not None and any(marker in error.message for marker in oom_markers)
    out_of_fuel = error is not None and error.kind == "out_of_fuel"
    if outcome is Outcome.FUNCTION_ERROR and not out_of_fuel and (at_limit or said_so):
        # The guest failed with its memory at the limit (a refused memory.grow),
        # or its interpreter said it ran out of heap.
        outcome = Outcome.OUT_OF_MEMORY
        message = error.message if error else "failed"
        error = InvocationError(
            kind="out_of_memory", message=f"memory limit of {limits.memory_mb} MiB reached ({message})"
        )
    return RunResult.captured(
        outcome,
        stdout,
        stderr,
        exit_code=exit_code,
        duration_ms=duration_ms,
        peak_memory_bytes=peak,
        error=error,
        fuel_consumed=fuel_consumed,
    )


def _run_qjs(store: wasmtime.Store, instance: wasmtime.Instance, argv: list[str]) -> int:
    """QuickJS reactor protocol: ``_initialize``, then ``qjs_init_argv`` with argv in guest memory."""
    exports = instance.exports(store)
    initialize, malloc, init_argv = exports["_initialize"], exports["malloc"], exports["qjs_init_argv"]
    memory = exports["memory"]
    assert isinstance(initialize, wasmtime.Func) and isinstance(malloc, wasmtime.Func)
    assert isinstance(init_argv, wasmtime.Func) and isinstance(memory, wasmtime.Memory)
    initialize(store)
    pointers = []
    for arg in argv:
        data = arg.encode() + b"\0"
        pointer = malloc(store, len(data))
        if not pointer:
            raise wasmtime.Trap("out of memory while passing arguments")
        memory.write(store, data, pointer)
        pointers.append(pointer)
    table = malloc(store, 4 * len(pointers))
    memory.write(store, b"".join(p.to_bytes(4, "little") for p in pointers), table)
    status = init_argv(store, len(pointers), table)
    return int(status)


def _trap_of(message: str) -> str | None:
    """The trap a component call ended with: wasmtime-py reports it as text only (no trap code)."""
    for line in reversed(message.splitlines()):
        line = line.strip()
        if line.startswith("wasm trap: "):
            return line.removeprefix("wasm trap: ")
    return None


def _tail(output: Output, limit: int = 2000) -> str:
    """The end of what the guest wrote to stderr: where an interpreter puts its error."""
    return output.getvalue()[-limit:].decode("utf-8", errors="replace").strip()
