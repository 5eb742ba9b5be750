"""The protocol every runtime tier implements.

A tier turns (function spec, input bytes) into a :class:`RunResult`. Like
OpenWhisk's container factory, each backend must provide:

* ``tier``: the :class:`~soulbox.core.schemas.Tier` it serves;
* ``run``: execute one invocation to the end, honouring ``spec.limits`` —
  the wall-clock deadline (``timeout_ms``: outcome ``TIMEOUT``), the memory
  limit (``memory_mb``: outcome ``OUT_OF_MEMORY``) and the output cap
  (``max_output_bytes``: output truncated and flagged, never unbounded). A
  guest failure (trap, non-zero exit, crash) is a ``FUNCTION_ERROR`` result,
  not an exception; an exception from ``run`` means SoulBox itself failed;
* ``run`` may be called concurrently, up to the worker's capacity;
* ``close``: release every resource; safe to call twice.

A tier that can surface output while the guest runs is a
:class:`StreamingRuntime`: its ``run_streaming`` hands every byte it keeps
(what the caps allow, in the order the guest wrote it) to an
:class:`OutputSink` as it arrives. The worker publishes the output of the
other tiers once their run ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from soulbox.core.outputlog import OutputStream
from soulbox.core.schemas import FunctionSpec, InvocationError, Outcome, Tier


class OutputSink(Protocol):
    """Takes output as it is produced; ``write`` must not block (it runs on the tier's read path)."""

    def write(self, stream: OutputStream, data: bytes) -> None: ...


@dataclass(slots=True)
class Output:
    """A bounded capture of one output stream; what it keeps also goes to ``sink`` at once."""

    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes the guest wrote, kept or not
    sink: OutputSink | None = None
    stream: OutputStream = "stdout"

    def write(self, data: bytes) -> None:
        room = self.limit - min(self.size, self.limit)
        if room > 0 and data:
            kept = data[:room]
            self.chunks.append(kept)
            if self.sink is not None:
                self.sink.write(self.stream, kept)
        self.size += len(data)

    @property
    def truncated(self) -> bool:
        return self.size > self.limit

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True, slots=True)
class RunResult:
    outcome: Outcome
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float
    peak_memory_bytes: int | None = None
    error: InvocationError | None = None
    fuel_consumed: int | None = None
    """Wasmtime fuel the run used, when it had a fuel budget and ended by itself or ran out of it
    (after a deadline or a trap Wasmtime's count may be stale: None)."""

    @classmethod
    def captured(
        cls,
        outcome: Outcome,
        stdout: Output,
        stderr: Output,
        *,
        exit_code: int | None,
        duration_ms: float,
        peak_memory_bytes: int | None = None,
        error: InvocationError | None = None,
        fuel_consumed: int | None = None,
    ) -> RunResult:
        """The result of a run whose output was captured in two :class:`Output` buffers."""
        return cls(
            outcome=outcome,
            exit_code=exit_code,
            stdout=stdout.getvalue(),
            stderr=stderr.getvalue(),
            stdout_bytes=stdout.size,
            stderr_bytes=stderr.size,
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            duration_ms=duration_ms,
            peak_memory_bytes=peak_memory_bytes,
            error=error,
            fuel_consumed=fuel_consumed,
        )


class Runtime(Protocol):
    tier: Tier

    async def run(self, spec: FunctionSpec, input: bytes) -> RunResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamingRuntime(Runtime, Protocol):
    """A tier that hands output to a sink while the guest runs (see the module docstring)."""

    async def run_streaming(self, spec: FunctionSpec, input: bytes, sink: OutputSink) -> RunResult: ...
