"""Test guests written in WAT and built with wasmtime.wat2wasm at test time."""

from __future__ import annotations

import functools

import wasmtime

_WASI = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"""


def _write(fd: int, ptr: int, length: int) -> str:
    # iovec at 0: {ptr, len}; nwritten at 8
    return f"""
    (i32.store (i32.const 0) (i32.const {ptr}))
    (i32.store (i32.const 4) (i32.const {length}))
    (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))"""


SOURCES: dict[str, str] = {
    # Prints a greeting.
    "hello": f"""(module {_WASI}
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\\n")
  (func (export "_start") {_write(1, 64, 16)}))""",
    # Copies stdin to stdout, 64 KiB at a time.
    "echo": f"""(module {_WASI}
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32)
    (block $done (loop $more
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 65536))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      (br_if $done (i32.eqz (local.get $n)))
      (i32.store (i32.const 16) (i32.const 1024))
      (i32.store (i32.const 20) (local.get $n))
      (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
      (br $more)))))""",
    # Writes to stdout and stderr, then exits with code 3.
    "stderr_exit3": f"""(module {_WASI}
  (memory (export "memory") 1)
  (data (i32.const 64) "out\\n")
  (data (i32.const 96) "err\\n")
  (func (export "_start") {_write(1, 64, 4)} {_write(2, 96, 4)}
    (call $proc_exit (i32.const 3))))""",
    # Never returns.
    "loop": f"""(module {_WASI}
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))""",
    # Grows memory one page at a time until refused, then traps (like a failed malloc).
    "grow": f"""(module {_WASI}
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))""",
    # Traps at once.
    "trap": f"""(module {_WASI}
  (memory (export "memory") 1)
  (func (export "_start") unreachable))""",
    # Writes 4 MiB of 'x' to stdout in 64 KiB chunks.
    "big_output": f"""(module {_WASI}
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 65536))
    (loop $more
      {_write(1, 1024, 65536)}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 64))))))""",
    # Imports a function SoulBox does not provide.
    "bad_import": """(module
  (import "env" "launch_missiles" (func))
  (memory (export "memory") 1)
  (func (export "_start")))""",
}


def _busy(ms: int) -> str:
    """Spins on the monotonic clock for ``ms`` milliseconds of wall time, then prints "done"."""
    return f"""(module {_WASI}
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "done\\n")
  (func (export "_start") (local $start i64)
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 32)))
    (local.set $start (i64.load (i32.const 32)))
    (loop $spin
      (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 32)))
      (br_if $spin (i64.lt_u (i64.sub (i64.load (i32.const 32)) (local.get $start)) (i64.const {ms * 1_000_000}))))
    {_write(1, 64, 5)}))"""


# An HTTP handler (handler=http) as a raw module: answers every request with the same JSON response.
HTTP_RESPONSE = '{"status": 201, "headers": {"x-guest": "wat"}, "body": "made by a raw module"}'
_ESCAPED = HTTP_RESPONSE.replace('"', '\\"')
SOURCES["http_created"] = f"""(module {_WASI}
  (memory (export "memory") 1)
  (data (i32.const 64) "{_ESCAPED}")
  (func (export "_start") {_write(1, 64, len(HTTP_RESPONSE))}))"""

SOURCES["slow"] = _busy(300)
SOURCES["slow_3s"] = _busy(3000)


@functools.cache
def wasm(name: str) -> bytes:
    """The compiled bytes of guest ``name``."""
    return bytes(wasmtime.wat2wasm(SOURCES[name]))
