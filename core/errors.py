"""The SoulBox error hierarchy.

Every error carries a stable machine-readable ``code`` and a human message.
HTTP status codes are chosen in exactly one place, the gateway's exception
handler; nothing below the gateway knows about HTTP.

    SoulboxError
     ├── InvalidRequest          bad input from a caller (code: invalid_request)
     │    ├── InvalidModule      the uploaded module does not compile
     │    └── PayloadTooLarge    a body over the configured limit
     ├── Unauthenticated         no or a wrong API key (code: unauthenticated)
     ├── Forbidden               authenticated, but the role or scopes do not allow it (code: forbidden)
     ├── NotFound                unknown resource (code: not_found)
     │    ├── FunctionNotFound
     │    └── InvocationNotFound
     ├── Conflict                the resource exists / changed meanwhile
     ├── Overloaded              no capacity now; retry later
     ├── InvocationTimeout       the invocation did not finish in time
     ├── FunctionFailed          the function ran and failed (trap, exit, OOM)
     ├── Unavailable             a dependency (NATS) is not reachable
     ├── SchemaError             a wire message that cannot be decoded
     └── TunnelError             an HTTP stream over NATS failed (code: tunnel_error)
          ├── TunnelUnreachable  no tunnel server listens on the subject (sandbox_unreachable)
          ├── TunnelTimeout      the tunnel server did not answer the open in time
          ├── TunnelPeerLost     the other side went silent or away mid-stream
          ├── TunnelProtocolError  a lost frame (sequence gap), credit overrun or bad frame
          ├── TunnelRemoteError  the server's handler failed; ``code`` is the handler's
          └── TunnelClosed       the stream was closed or cancelled on purpose
"""

from __future__ import annotations


class SoulboxError(Exception):
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(SoulboxError):
    code = "invalid_request"


class InvalidModule(InvalidRequest):
    code = "invalid_module"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class Unauthenticated(SoulboxError):
    code = "unauthenticated"


class Forbidden(SoulboxError):
    code = "forbidden"


class NotFound(SoulboxError):
    code = "not_found"


class FunctionNotFound(NotFound):
    code = "function_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"function {name!r} does not exist")
        self.name = name


class InvocationNotFound(NotFound):
    code = "invocation_not_found"

    def __init__(self, invocation_id: str) -> None:
        super().__init__(f"invocation {invocation_id!r} does not exist")
        self.invocation_id = invocation_id


class Conflict(SoulboxError):
    code = "conflict"


class Overloaded(SoulboxError):
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvocationTimeout(SoulboxError):
    code = "invocation_timeout"

    def __init__(self, invocation_id: str, timeout_ms: int) -> None:
        super().__init__(f"invocation {invocation_id} did not finish within {timeout_ms} ms")
        self.invocation_id = invocation_id
        self.timeout_ms = timeout_ms


class FunctionFailed(SoulboxError):
    """The function ran and failed; ``code`` is the outcome (function_error, out_of_memory, ...)."""

    def __init__(self, invocation_id: str, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.invocation_id = invocation_id


class Unavailable(SoulboxError):
    code = "unavailable"


class SchemaError(SoulboxError):
    code = "schema_error"


class TunnelError(SoulboxError):
    code = "tunnel_error"


class TunnelUnreachable(TunnelError):
    code = "sandbox_unreachable"


class TunnelTimeout(TunnelError):
    code = "tunnel_timeout"


class TunnelPeerLost(TunnelError):
    code = "tunnel_peer_lost"


class TunnelProtocolError(TunnelError):
    code = "tunnel_protocol_error"


class TunnelRemoteError(TunnelError):
    """The tunnel server reported a failure; ``code`` is the one it sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class TunnelClosed(TunnelError):
    code = "tunnel_closed"
