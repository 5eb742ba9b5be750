"""End-to-end invoke latency and throughput next to in-process Wasmtime, in one run.

Starts a private stack with ``soulbox up`` (own NATS on a free port, temp data
dir) and measures, for a hello function in each Wasmtime-tier runtime (a raw
WASI module, QuickJS source, MicroPython source, a WASI p2 component, CPython source):

* in-process: compile and deserialize times of the module (the interpreter's,
  for source functions) and a warm call (shared InstancePre, new Store per
  call), plus bare wasmtime-py calls of the WASI module, the component and CPython;
* end to end over HTTP: the first invoke after deploy (compiles), then warm
  sequential invokes over one keep-alive connection from a lean client (p50/p99),
  next to uvicorn + Starlette answering ``hello`` to the same client (the HTTP floor);
* throughput: concurrent sync invokes of the WASI hello from a lean HTTP/1.1
  client (so the load generator does not eat the CPU the stack needs), with the
  CPU each stack process spent per invocation (from ``/proc``);
* fuel: compile time and warm calls of the same functions, plus a CPU-bound
  WASI loop, on the plain engine and on the fuel-metering one (functions with
  a ``fuel`` budget), calls interleaved so load drift hits both alike.

``--in-process`` measures the in-process rows and fuel only (no stack).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import wasmtime
import wasmtime.component as wc

from soulbox.core.schemas import Limits, Runtime
from soulbox.runtimes.wasm import components, cpython
from soulbox.runtimes.wasm.engine import WasmEngine
from soulbox.runtimes.wasm.execute import execute
from soulbox.runtimes.wasm.guests import Entry, define_host_imports, interpreter
from soulbox.runtimes.wasm.modules import Prepared

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stackbench.py beside it
from stackbench import CpuMeter, LeanClient, bare_http_server, pct, request_rate, start_stack, timed

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""

# The same hello as a WASI p2 component: wasi:cli/run writes to wasi:cli/stdout.
HELLO_COMPONENT_WAT = """(component
  (import "wasi:io/error@0.2.0" (instance $error (export "error" (type (sub resource)))))
  (alias export $error "error" (type $err))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $err (type $e))
    (export "error" (type $e2 (eq $e)))
    (type $se (variant (case "last-operation-failed" (own $e2)) (case "closed")))
    (export "stream-error" (type $se2 (eq $se)))
    (export "output-stream" (type $os (sub resource)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se2)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os))
    (export "output-stream" (type $os2 (eq $os)))
    (export "get-stdout" (func (result (own $os2))))))
  (core module $Mem (memory (export "memory") 1))
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))
  (core func $get (canon lower (func $stdout "get-stdout")))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))
  (core module $M
    (import "env" "memory" (memory 1))
    (import "io" "get-stdout" (func $get (result i32)))
    (import "io" "write" (func $write (param i32 i32 i32 i32)))
    (data (i32.const 16) "hello from a component\\n")
    (func (export "run") (result i32)
      (call $write (call $get) (i32.const 16) (i32.const 23) (i32.const 64))
      (i32.const 0)))
  (core instance $io (export "get-stdout" (func $get)) (export "write" (func $write)))
  (core instance $main (instantiate $M (with "env" (instance $mem)) (with "io" (instance $io))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run_inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run_inst)))"""

FUNCTIONS = {  # name: (runtime, code, expected stdout)
    "hello-wasi": (Runtime.WASI, bytes(wasmtime.wat2wasm(HELLO_WAT)), b"hello from wasm\n"),
    "hello-js": (Runtime.QUICKJS, b"console.log('hello from quickjs')", b"hello from quickjs\n"),
    "hello-py": (Runtime.MICROPYTHON, b"print('hello from micropython')", b"hello from micropython\n"),
    "hello-component": (
        Runtime.COMPONENT,
        bytes(wasmtime.wat2wasm(HELLO_COMPONENT_WAT)),
        b"hello from a component\n",
    ),
    "hello-cpython": (Runtime.CPYTHON, b"print('hello from cpython')", b"hello from cpython\n"),
}


# Counts down from 10 million: a CPU-bound guest, where fuel metering costs the most.
SPIN_WAT = """(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (local.set $i (i32.const 10000000))
    (loop $more
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $more (local.get $i)))))"""
FUEL_BUDGET = 10**12  # never reached: the cost of metering, not of running out


def in_process(n: int) -> dict[str, dict[str, float]]:
    engine = WasmEngine()
    linker = wasmtime.Linker(engine.engine)
    linker.define_wasi()
    define_host_imports(linker)
    limits = Limits()
    rows: dict[str, dict[str, float]] = {}
    prepared: dict[str, Prepared] = {}
    for name, (runtime, code, expected) in FUNCTIONS.items():
        guest = interpreter(runtime)
        compile_ms, deserialize_ms, pre = load(engine, linker, runtime, guest.module_bytes if guest else code)
        prepared[name] = pre
        argv = guest.argv(code.decode(), memory_mb=limits.memory_mb) if guest else [name]
        entry = entry_of(runtime)

        def call(pre=pre, argv=argv, entry=entry, expected=expected) -> None:  # type: ignore[no-untyped-def]
            result = execute(engine, pre, argv=argv, entry=entry, input=b"", limits=limits)
            assert result.stdout == expected, result

        call()
        rows[name] = {"compile": compile_ms, "deserialize": deserialize_ms, "warm": statistics.median(timed(call, n))}
    python_pre = prepared["hello-cpython"]
    assert isinstance(python_pre, cpython.CPythonPre)
    rows["hello-cpython"]["bare"] = statistics.median(bare_cpython(engine, python_pre, n))
    engine.close()
    rows["hello-wasi"]["bare"] = statistics.median(bare_wasmtime(FUNCTIONS["hello-wasi"][1], n))
    rows["hello-component"]["bare"] = statistics.median(bare_component(FUNCTIONS["hello-component"][1], n))
    return rows


def entry_of(runtime: Runtime) -> Entry:
    guest = interpreter(runtime)
    return guest.entry if guest else "component" if runtime is Runtime.COMPONENT else "start"


def load(engine: WasmEngine, linker: wasmtime.Linker, runtime: Runtime, data: bytes) -> tuple[float, float, Prepared]:
    """Compile ms, deserialize ms and what a call instantiates, as the worker's module cache does."""
    kind = wc.Component if runtime in (Runtime.COMPONENT, Runtime.CPYTHON) else wasmtime.Module
    started = time.perf_counter()
    artifact = kind(engine.engine, data)
    compile_ms = (time.perf_counter() - started) * 1000
    serialized = artifact.serialize()
    started = time.perf_counter()
    artifact = kind.deserialize(engine.engine, serialized)
    deserialize_ms = (time.perf_counter() - started) * 1000
    if isinstance(artifact, wc.Component) and runtime is Runtime.CPYTHON:
        return compile_ms, deserialize_ms, cpython.prepare(artifact, cpython.make_linker(engine.engine))
    if isinstance(artifact, wc.Component):
        return (
            compile_ms,
            deserialize_ms,
            components.prepare(artifact, components.make_linker(engine.engine), engine.engine),
        )
    return compile_ms, deserialize_ms, linker.instantiate_pre(artifact)


def fuel_overhead(n: int) -> dict[str, dict[str, float]]:
    """Per function: compile ms and warm call ms on the plain and on the fuel engine, and fuel used."""
    engines = {fuel: WasmEngine(fuel=fuel) for fuel in (False, True)}
    functions = {**FUNCTIONS, "spin-wasi": (Runtime.WASI, bytes(wasmtime.wat2wasm(SPIN_WAT)), b"")}
    rows: dict[str, dict[str, float]] = {}
    for name, (runtime, code, expected) in functions.items():
        guest = interpreter(runtime)
        row: dict[str, float] = {}
        calls = {}
        for fuel, engine in engines.items():
            linker = wasmtime.Linker(engine.engine)
            linker.define_wasi()
            define_host_imports(linker)
            row[f"compile_{int(fuel)}"], _, pre = load(engine, linker, runtime, guest.module_bytes if guest else code)
            limits = Limits(fuel=FUEL_BUDGET if fuel else None)
            argv = guest.argv(code.decode(), memory_mb=limits.memory_mb) if guest else [name]
            entry = entry_of(runtime)

            def call(  # type: ignore[no-untyped-def]
                engine=engine, pre=pre, argv=argv, entry=entry, limits=limits, expected=expected
            ):
                result = execute(engine, pre, argv=argv, entry=entry, input=b"", limits=limits)
                assert result.stdout == expected, result
                return result

            row["fuel_used"] = float(call().fuel_consumed or 0) if fuel else 0.0
            calls[fuel] = call
        samples: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(n):  # interleaved: both engines see the same load
            for fuel, call in calls.items():
                started = time.perf_counter()
                call()
                samples[fuel].append((time.perf_counter() - started) * 1000)
        row["warm_0"], row["warm_1"] = statistics.median(samples[False]), statistics.median(samples[True])
        rows[name] = row
    for engine in engines.values():
        engine.close()
    return rows


def print_fuel(rows: dict[str, dict[str, float]]) -> None:
    print("\n| function | compile ms | compile ms, fuel | warm ms | warm ms, fuel | fuel overhead | fuel used |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        overhead = (r["warm_1"] / r["warm_0"] - 1) * 100
        print(
            f"| {name} | {r['compile_0']:.1f} | {r['compile_1']:.1f} | {r['warm_0']:.3f} | {r['warm_1']:.3f} "
            f"| {overhead:+.0f} % | {r['fuel_used']:,.0f} |"
        )


def bare_wasmtime(module: bytes, n: int) -> list[float]:
    """wasmtime-py alone: shared Linker + InstancePre, a new Store and WASI context per call."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(wasmtime.Module(engine, module))

    def call() -> None:
        out: list[bytes] = []
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1000)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = out.append
        store.set_wasi(wasi)
        start = pre.instantiate(store).exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)

    return timed(call, n)


def bare_component(component: bytes, n: int) -> list[float]:
    """wasmtime-py alone: shared component Linker with WASI p2, a new Store, instance and WASI context per call."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = wc.Linker(engine)
    linker.add_wasip2()
    compiled = wc.Component(engine, component)
    run_interface = compiled.get_export_index("wasi:cli/run@0.2.0")
    run_index = compiled.get_export_index("run", run_interface)
    assert run_index is not None

    def call() -> None:
        out: list[bytes] = []
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1000)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = out.append
        store.set_wasi(wasi)
        run = linker.instantiate(store, compiled).get_func(store, run_index)
        assert run is not None
        run(store)

    return timed(call, n)


def bare_cpython(engine: WasmEngine, pre: cpython.CPythonPre, n: int) -> list[float]:
    """wasmtime-py alone, the same compiled CPython component: a new Store, instance, WASI context per call."""

    def call() -> None:
        store = wasmtime.Store(engine.engine)
        store.set_epoch_deadline(100_000)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_wasi_http()
        run = pre.linker.instantiate(store, pre.component).get_func(store, pre.run_index)
        assert run is not None
        run(store, "print('hello from cpython')")

    return timed(call, n)


def end_to_end(url: str, n: int) -> dict[str, dict[str, float]]:
    """Per function: the first invoke after deploy, then warm sequential invokes from a lean client."""
    rows: dict[str, dict[str, float]] = {}
    lean = LeanClient(url)
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, (runtime, code, expected) in FUNCTIONS.items():
            # A generous deadline: the worker compiles the CPython component on its first call.
            form = {"name": name, "runtime": runtime.value, "timeout_ms": "300000"}
            deployed = client.post("/v1/functions", data=form, files={"code": (name, code)})
            assert deployed.status_code in (200, 201), deployed.text

            def call(name: str = name, expected: bytes = expected) -> None:
                status, _, body = lean.request("POST", f"/v1/functions/{name}/invoke")
                assert status == 200 and body == expected, (status, body)

            first = timed(call, 1)[0]
            timed(call, 50)  # warm-up: connections, caches
            samples = timed(call, n)
            rows[name] = {"first": first, "p50": statistics.median(samples), "p99": pct(samples, 0.99)}
    lean.close()
    return rows


def bare_http(n: int) -> dict[str, float]:
    """The same lean client against uvicorn + Starlette answering ``hello``: the HTTP floor."""
    with bare_http_server() as url:
        lean = LeanClient(url)
        timed(lambda: lean.request("POST", "/"), 200)
        samples = timed(lambda: lean.request("POST", "/"), n)
        lean.close()
        rate = asyncio.run(request_rate(url, "POST", "/", 5000, 32))
    return {"p50": statistics.median(samples), "p99": pct(samples, 0.99), "rate": rate}


async def throughput(url: str, name: str, total: int, concurrency: int) -> float:
    """Sync invokes of ``name`` per second over ``concurrency`` keep-alive connections."""
    return await request_rate(url, "POST", f"/v1/functions/{name}/invoke", total, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="warm calls per measure")
    parser.add_argument("--total", type=int, default=5000, help="invokes in the throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--in-process", action="store_true", help="in-process rows and fuel only: no stack")
    args = parser.parse_args()

    local = in_process(args.n)
    fuel = fuel_overhead(min(args.n, 200))
    if args.in_process:
        print(f"## Wasmtime in-process — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores\n")
        for name, lo in local.items():
            print(f"{name}: compile {lo['compile']:.1f} ms, deserialize {lo['deserialize']:.2f} ms, ", end="")
            print(f"warm {lo['warm']:.3f} ms" + (f", bare wasmtime-py {lo['bare']:.3f} ms" if "bare" in lo else ""))
        print_fuel(fuel)
        return
    floor = bare_http(args.n)
    with tempfile.TemporaryDirectory(prefix="soulbox-bench-") as tmp:
        process, url = start_stack(Path(tmp), args.workers)
        try:
            remote = end_to_end(url, args.n)
            meter = CpuMeter(process)
            meter.start()
            rate = asyncio.run(throughput(url, "hello-wasi", args.total, args.concurrency))
            time.sleep(2.0)  # the event consumers catch up: their CPU belongs to these invocations
            cpu = meter.stop()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)

    print(f"## Invoke, Wasmtime tier — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores\n")
    print(f"bare wasmtime-py call of the WASI hello (InstancePre, new Store): {local['hello-wasi']['bare']:.3f} ms p50")
    print(
        "bare wasmtime-py call of the component hello (component Linker, new Store): "
        f"{local['hello-component']['bare']:.3f} ms p50"
    )
    print(
        "bare wasmtime-py call of the CPython hello (same compiled component, new Store): "
        f"{local['hello-cpython']['bare']:.3f} ms p50\n"
    )
    print(
        "| function | compile ms | deserialize ms | warm in-process ms | first HTTP invoke ms "
        "| warm HTTP p50 ms | warm HTTP p99 ms | overhead p50 ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in FUNCTIONS:
        lo, re_ = local[name], remote[name]
        print(
            f"| {name} | {lo['compile']:.1f} | {lo['deserialize']:.2f} | {lo['warm']:.3f} | {re_['first']:.1f} "
            f"| {re_['p50']:.3f} | {re_['p99']:.3f} | {re_['p50'] - lo['warm']:.3f} |"
        )
    print(
        f"| bare HTTP (uvicorn + Starlette `hello`, same client) | | | | | {floor['p50']:.3f} | {floor['p99']:.3f} | |"
    )
    print(
        f"\nthroughput, hello-wasi, {args.concurrency} concurrent connections, {args.workers} worker(s): "
        f"{rate:,.0f} invocations/s (bare HTTP hello: {floor['rate']:,.0f} requests/s)"
    )
    print("\nCPU per invocation in the throughput run (µs):\n")
    print("| " + " | ".join(cpu) + " | all |")
    print("|" + " ---: |" * (len(cpu) + 1))
    print("| " + " | ".join(f"{seconds / args.total * 1e6:,.0f}" for seconds in cpu.values()), end="")
    print(f" | {sum(cpu.values()) / args.total * 1e6:,.0f} |")
    print_fuel(fuel)


if __name__ == "__main__":
    main()
