"""One invocation on one process, and how its end is classified.

Every way an invocation ends maps to exactly one outcome here:

* the deadline passes (while loading or running): the process group is
  killed, ``TIMEOUT``;
* the memory over the baseline passes ``memory_mb`` (see ``memory``), or it dies of a
  heap limit (V8's ``--max-old-space-size``): ``OUT_OF_MEMORY``;
* script mode: exit 0 is ``SUCCESS``; any other exit is ``FUNCTION_ERROR``
  (kind ``exit``, or ``uncaught`` / ``unhandled_rejection`` when the shim
  reported why, with the error's message);
* fetch mode: a ``Response`` is ``SUCCESS`` whatever its status; a throw or a
  non-Response is ``FUNCTION_ERROR`` and the process stays warm; an
  uncaught error or unhandled rejection is ``FUNCTION_ERROR`` and the process
  is replaced; a crash is ``FUNCTION_ERROR`` (kind ``crash``).
"""

from __future__ import annotations

import asyncio
import signal
import time

from soulbox.core.schemas import InvocationError, Limits, Outcome

from ..protocol import Output, OutputSink, RunResult
from .http import HttpRequest, HttpResponse
from .process import Breach, JsProcess
from .wire import Frame

MIB = 1024 * 1024
OOM_MARKERS = ("out of memory", "heap limit", "allocation failed")
RECOVERABLE = frozenset({"exception", "bad_response"})  # the fetch process stays warm


def finish(
    outcome: Outcome,
    started: float,
    stdout: Output,
    stderr: Output,
    *,
    exit_code: int | None = None,
    error: InvocationError | None = None,
    peak: int | None = None,
) -> RunResult:
    return RunResult.captured(
        outcome,
        stdout,
        stderr,
        exit_code=exit_code,
        duration_ms=(time.perf_counter() - started) * 1000,
        peak_memory_bytes=peak,
        error=error,
    )


def breach_error(breach: Breach, limits: Limits) -> tuple[Outcome, InvocationError]:
    if breach is Breach.TIMEOUT:
        return Outcome.TIMEOUT, InvocationError(kind="timeout", message=f"deadline of {limits.timeout_ms} ms exceeded")
    message = f"memory limit of {limits.memory_mb} MiB reached"
    return Outcome.OUT_OF_MEMORY, InvocationError(kind="out_of_memory", message=message)


def _is_oom(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


def crash_error(proc: JsProcess, limits: Limits) -> tuple[Outcome, InvocationError]:
    """The process died without saying why: a heap limit, or a crash."""
    tail = proc.stderr_tail.decode(errors="replace")
    if proc.memory.oom_killed() or _is_oom(tail):
        return Outcome.OUT_OF_MEMORY, InvocationError(
            kind="out_of_memory", message=f"memory limit of {limits.memory_mb} MiB reached (heap limit)"
        )
    code = proc.returncode
    if code is not None and code < 0:
        message = f"the runtime was killed by {signal.Signals(-code).name}"
    else:
        message = f"the runtime exited with code {code}"
    return Outcome.FUNCTION_ERROR, InvocationError(kind="crash", message=message)


def reported_error(frame: Frame, limits: Limits) -> tuple[Outcome, InvocationError]:
    message = str(frame.meta.get("message", "error"))
    if _is_oom(message):
        return Outcome.OUT_OF_MEMORY, InvocationError(
            kind="out_of_memory", message=f"memory limit of {limits.memory_mb} MiB reached ({message})"
        )
    return Outcome.FUNCTION_ERROR, InvocationError(kind=str(frame.meta.get("kind", "error")), message=message)


def _remaining(started: float, limits: Limits) -> float:
    return limits.timeout_ms / 1000 - (time.perf_counter() - started)


def _last_error(proc: JsProcess) -> Frame | None:
    report = None
    while not proc.frames.empty():
        frame = proc.frames.get_nowait()
        if frame is not None and frame.type == "error":
            report = frame
    return report


async def run_script(
    proc: JsProcess, input: bytes, limits: Limits, started: float, sink: OutputSink | None = None
) -> RunResult:
    """Run the script in a spare process: input on stdin, raw stdout/stderr (also to ``sink``), the exit status."""
    stdout = Output(limits.max_output_bytes, sink=sink, stream="stdout")
    stderr = Output(limits.max_output_bytes, sink=sink, stream="stderr")
    proc.sinks = (stdout, stderr)
    try:
        proc.send({"type": "run"})
    except ConnectionError:
        await proc.exited()
        outcome, error = crash_error(proc, limits)
        return finish(outcome, started, stdout, stderr, error=error)
    feeder = asyncio.create_task(proc.feed_stdin(input))
    verdict = await proc.guard(proc.exited(), _remaining(started, limits), limits.memory_mb * MIB)
    code = await proc.exited()  # after a kill too: collects the last output and the peak
    await asyncio.gather(feeder, return_exceptions=True)
    peak = proc.memory.peak()
    if isinstance(verdict, Breach):
        outcome, error = breach_error(verdict, limits)
        return finish(outcome, started, stdout, stderr, error=error, peak=peak)
    if code == 0:
        return finish(Outcome.SUCCESS, started, stdout, stderr, exit_code=0, peak=peak)
    report = _last_error(proc)
    if report is not None:
        outcome, error = reported_error(report, limits)
    elif code < 0 or proc.memory.oom_killed() or _is_oom(proc.stderr_tail.decode(errors="replace")):
        outcome, error = crash_error(proc, limits)
    else:
        outcome, error = Outcome.FUNCTION_ERROR, InvocationError(kind="exit", message=f"exited with code {code}")
    return finish(outcome, started, stdout, stderr, exit_code=code if code >= 0 else None, error=error, peak=peak)


async def _reply(proc: JsProcess, seq: int) -> Frame | None:
    while True:
        frame = await proc.frames.get()
        if frame is None or (frame.type in ("result", "error") and frame.meta.get("id") in (seq, None)):
            return frame


async def run_fetch(
    proc: JsProcess, request: HttpRequest, limits: Limits, started: float, seq: int, sink: OutputSink | None = None
) -> tuple[RunResult, bool]:
    """Serve one request on a warm process; also says whether the process may serve again.

    ``sink`` gets the logs (stray writes as they come, console output with the reply) as stderr."""
    body, logs = Output(limits.max_output_bytes), Output(limits.max_output_bytes, sink=sink, stream="stderr")
    proc.sinks = (logs, logs)  # raw writes past console go to the logs too
    proc.memory.reset_peak()
    meta = {
        "type": "invoke",
        "id": seq,
        "method": request.method,
        "url": request.url,
        "headers": [list(h) for h in request.headers],
        "max_body": limits.max_output_bytes,
        "max_logs": limits.max_output_bytes,
    }
    try:
        proc.send(meta, request.body)
        verdict = await proc.guard(_reply(proc, seq), _remaining(started, limits), limits.memory_mb * MIB)
    except ConnectionError:
        verdict = None
    peak = proc.memory.peak()
    proc.sinks = (None, None)
    if isinstance(verdict, Breach):
        await proc.exited()
        outcome, error = breach_error(verdict, limits)
        return finish(outcome, started, body, logs, error=error, peak=peak), False
    if verdict is None:
        await proc.exited()
        outcome, error = crash_error(proc, limits)
        return finish(outcome, started, body, logs, error=error, peak=proc.memory.peak()), False
    text = str(verdict.meta.get("logs", "")).encode()
    before = logs.size
    logs.write(text)
    logs.size = before + int(verdict.meta.get("logs_bytes", len(text)))  # the shim kept at most the cap
    if verdict.type == "error":
        stack = str(verdict.meta.get("stack") or verdict.meta.get("message", ""))
        logs.write(f"{stack}\n".encode())
        outcome, error = reported_error(verdict, limits)
        return finish(outcome, started, body, logs, error=error, peak=peak), error.kind in RECOVERABLE
    response = HttpResponse(
        status=int(verdict.meta["status"]),
        headers=tuple((str(k), str(v)) for k, v in verdict.meta.get("headers", ())),
        body=verdict.payload,
    )
    size = int(verdict.meta.get("body_bytes", len(response.body)))
    return RunResult(
        outcome=Outcome.SUCCESS,
        exit_code=None,
        stdout=response.encode(),
        stderr=logs.getvalue(),
        stdout_bytes=size,
        stderr_bytes=logs.size,
        stdout_truncated=size > len(response.body),
        stderr_truncated=logs.truncated,
        duration_ms=(time.perf_counter() - started) * 1000,
        peak_memory_bytes=peak,
    ), True
