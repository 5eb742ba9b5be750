"""From a runtime's :class:`~soulbox.runtimes.protocol.RunResult` to the invocation's final record and trace status."""

from __future__ import annotations

from soulbox.core import tracing
from soulbox.core.schemas import EventType, InvocationError, InvocationRecord, Outcome, Status, utcnow

from .protocol import RunResult

_STATUS_BY_OUTCOME = {
    Outcome.SUCCESS: (Status.COMPLETED, EventType.COMPLETED),
    Outcome.TIMEOUT: (Status.TIMED_OUT, EventType.TIMED_OUT),
}


def trace_outcome(span: tracing.Span, final: InvocationRecord) -> None:
    """Mark the invocation's span with how it ended; a failure shows as an error in trace views."""
    span.set_attributes(
        {
            "soulbox.status": final.status.value,
            "soulbox.outcome": final.outcome.value if final.outcome else "",
            "soulbox.duration_ms": final.duration_ms or 0.0,
        }
    )
    if final.outcome is not Outcome.SUCCESS:
        # A failed invocation shows as an error in trace views, described by its error kind.
        span.set_status(tracing.Status(tracing.StatusCode.ERROR, final.error.kind if final.error else "failed"))


def platform_failure(exc: Exception) -> RunResult:
    """SoulBox failed, not the guest: the result that says so."""
    return RunResult(
        outcome=Outcome.PLATFORM_ERROR,
        exit_code=None,
        stdout=b"",
        stderr=b"",
        stdout_bytes=0,
        stderr_bytes=0,
        stdout_truncated=False,
        stderr_truncated=False,
        duration_ms=0.0,
        error=InvocationError(kind="platform", message=f"{type(exc).__name__}: {exc}"),
    )


def finish(record: InvocationRecord, result: RunResult) -> tuple[InvocationRecord, EventType]:
    """The attempt's final record (from its ``running`` one) and the event type that announces it."""
    status, event_type = _STATUS_BY_OUTCOME.get(result.outcome, (Status.FAILED, EventType.FAILED))
    final = record.model_copy(
        update={
            "status": status,
            "outcome": result.outcome,
            "exit_code": result.exit_code,
            "error": result.error,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "stdout_bytes": result.stdout_bytes,
            "stderr_bytes": result.stderr_bytes,
            "stdout_truncated": result.stdout_truncated,
            "stderr_truncated": result.stderr_truncated,
            "finished_at": utcnow(),
            "duration_ms": result.duration_ms,
            "peak_memory_bytes": result.peak_memory_bytes,
        }
    )
    return final, event_type
