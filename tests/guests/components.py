"""WASI preview-2 test components in the component text format, built with wasmtime.wat2wasm.

Each imports stdin, stdout, stderr (``wasi:io/streams`` blocking read and
write) and ``wasi:cli/exit``, and exports ``wasi:cli/run`` whose ``run`` is a
core function of the body: ``(func (export "run") (result i32) ...)``, 0 for
``ok``, 1 for ``err``. The body may call ``$get_stdin``, ``$get_stdout``,
``$get_stderr`` (stream handles), ``$read (handle, len: i64, retptr)`` (at
``retptr``: the result tag, then the list's pointer and length),
``$write (handle, ptr, len, retptr)`` (at most 4096 bytes) and ``$exit (is_err)``.
"""

from __future__ import annotations

import functools

import wasmtime

_COMPONENT = """(component
  (import "wasi:io/error@0.2.0" (instance $error (export "error" (type (sub resource)))))
  (alias export $error "error" (type $err))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $err (type $e))
    (export "error" (type $e2 (eq $e)))
    (type $se (variant (case "last-operation-failed" (own $e2)) (case "closed")))
    (export "stream-error" (type $se2 (eq $se)))
    (export "input-stream" (type $is (sub resource)))
    (export "output-stream" (type $os (sub resource)))
    (export "[method]input-stream.blocking-read"
      (func (param "self" (borrow $is)) (param "len" u64) (result (result (list u8) (error $se2)))))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se2)))))))
  (alias export $streams "input-stream" (type $input-stream))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdin@0.2.0" (instance $stdin
    (alias outer 1 $input-stream (type $is))
    (export "input-stream" (type $is2 (eq $is)))
    (export "get-stdin" (func (result (own $is2))))))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os))
    (export "output-stream" (type $os2 (eq $os)))
    (export "get-stdout" (func (result (own $os2))))))
  (import "wasi:cli/stderr@0.2.0" (instance $stderr
    (alias outer 1 $output-stream (type $os))
    (export "output-stream" (type $os2 (eq $os)))
    (export "get-stderr" (func (result (own $os2))))))
  (import "wasi:cli/exit@0.2.0" (instance $exit (export "exit" (func (param "status" (result))))))
  IMPORTS
  (core module $Mem
    (memory (export "memory") 2)
    (global $next (mut i32) (i32.const 4096))
    ;; A bump allocator for what the host returns (bytes read); `reset` frees everything.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $p i32)
      (local.set $p (global.get $next))
      (global.set $next (i32.add (global.get $next) (local.get 3)))
      (local.get $p))
    (func (export "reset") (global.set $next (i32.const 4096))))
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))
  (core func $get_stdin (canon lower (func $stdin "get-stdin")))
  (core func $get_stdout (canon lower (func $stdout "get-stdout")))
  (core func $get_stderr (canon lower (func $stderr "get-stderr")))
  (core func $exit (canon lower (func $exit "exit")))
  (core func $read
    (canon lower (func $streams "[method]input-stream.blocking-read") (memory $memory) (realloc $realloc)))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))
  (core module $M
    (import "env" "memory" (memory 2))
    (import "env" "reset" (func $reset))
    (import "io" "get-stdin" (func $get_stdin (result i32)))
    (import "io" "get-stdout" (func $get_stdout (result i32)))
    (import "io" "get-stderr" (func $get_stderr (result i32)))
    (import "io" "read" (func $read (param i32 i64 i32)))
    (import "io" "write" (func $write (param i32 i32 i32 i32)))
    (import "io" "exit" (func $exit (param i32)))
    BODY)
  (core instance $io
    (export "get-stdin" (func $get_stdin)) (export "get-stdout" (func $get_stdout))
    (export "get-stderr" (func $get_stderr)) (export "read" (func $read)) (export "write" (func $write))
    (export "exit" (func $exit)))
  (core instance $main (instantiate $M (with "env" (instance $mem)) (with "io" (instance $io))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run_inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run_inst)))"""

_HTTP_RESPONSE = '{"status": 201, "headers": {"x-guest": "component"}, "body": "made by a component"}'
_ESCAPED = _HTTP_RESPONSE.replace('"', '\\"')

BODIES: dict[str, str] = {
    # Prints a greeting.
    "hello": """(data (i32.const 64) "hello from a component\\n")
    (func (export "run") (result i32)
      (call $write (call $get_stdout) (i32.const 64) (i32.const 23) (i32.const 32))
      (i32.const 0))""",
    # Copies stdin to stdout, 4 KiB at a time, until the input is closed.
    "echo": """(func (export "run") (result i32) (local $in i32) (local $out i32)
      (local.set $in (call $get_stdin))
      (local.set $out (call $get_stdout))
      (block $done (loop $more
        (call $reset)
        (call $read (local.get $in) (i64.const 4096) (i32.const 16))
        (br_if $done (i32.load8_u (i32.const 16)))
        (call $write (local.get $out) (i32.load (i32.const 20)) (i32.load (i32.const 24)) (i32.const 32))
        (br $more)))
      (i32.const 0))""",
    # Writes to stderr, then run returns err (exit code 1).
    "fails": """(data (i32.const 64) "it went wrong\\n")
    (func (export "run") (result i32)
      (call $write (call $get_stderr) (i32.const 64) (i32.const 14) (i32.const 32))
      (i32.const 1))""",
    # wasi:cli/exit with an error.
    "exits": """(func (export "run") (result i32) (call $exit (i32.const 1)) (i32.const 0))""",
    # Never returns.
    "loop": """(func (export "run") (result i32) (loop $forever (br $forever)) (i32.const 0))""",
    # Grows memory a page at a time until refused, then traps.
    "grow": """(func (export "run") (result i32)
      (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      unreachable)""",
    # One write of 8 KiB: more than a blocking-write-and-flush may take (4 KiB); the host refuses it.
    "big_write": """(func (export "run") (result i32)
      (call $write (call $get_stdout) (i32.const 0) (i32.const 8192) (i32.const 32))
      (i32.const 0))""",
    # An HTTP handler (handler=http): the same JSON response to every request.
    "http_created": f"""(data (i32.const 64) "{_ESCAPED}")
    (func (export "run") (result i32)
      (call $write (call $get_stdout) (i32.const 64) (i32.const {len(_HTTP_RESPONSE)}) (i32.const 32))
      (i32.const 0))""",
}

# Imports wasi:http, which SoulBox does not give components.
_HTTP_IMPORT = """(import "wasi:http/outgoing-handler@0.2.0" (instance $http (export "probe" (func))))"""


@functools.cache
def component(name: str) -> bytes:
    """The compiled bytes of test component ``name`` (``bad_import``: imports wasi:http)."""
    if name == "bad_import":
        text = _COMPONENT.replace("IMPORTS", _HTTP_IMPORT).replace("BODY", BODIES["hello"])
    else:
        text = _COMPONENT.replace("IMPORTS", "").replace("BODY", BODIES[name])
    return bytes(wasmtime.wat2wasm(text))
