"""The interpreter server's own failures, each with a stable code and an HTTP status.

InterpreterError
 ├── BadRequest          400  a body or parameter the API does not accept
 ├── ContextNotFound     404  no context with that id
 ├── Busy                429  too many executions already queued on the context
 └── KernelStartFailed   500  a kernel process could not be started
"""

from __future__ import annotations


class InterpreterError(Exception):
    """Base class: `code` and `status` become the JSON error response."""

    code = "interpreter_error"
    status = 500


class BadRequest(InterpreterError):
    code = "bad_request"
    status = 400


class ContextNotFound(InterpreterError):
    code = "context_not_found"
    status = 404

    def __init__(self, context_id: str) -> None:
        super().__init__(f"Context {context_id} not found")
        self.context_id = context_id


class Busy(InterpreterError):
    code = "context_busy"
    status = 429


class KernelStartFailed(InterpreterError):
    code = "kernel_start_failed"
    status = 500
