"""The contract: every message that crosses NATS, defined once.

Each wire message is a pydantic model carrying ``v`` (its schema version) and
is encoded with msgpack by :mod:`soulbox.core.codec`. A reader accepts any
version up to its own and rejects newer ones with a ``SchemaError``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

from .errors import InvalidRequest

SCHEMA_VERSION: Literal[1] = 1

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_RE = re.compile(NAME_PATTERN)
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def checked_name(value: str, *, what: str) -> str:
    """``value`` unchanged, or ``InvalidRequest`` when it is not a valid name (no wildcards, no dots)."""
    if NAME_RE.match(value):
        return value
    raise InvalidRequest(f"invalid {what} name {value!r}")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every wire message."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    v: int = SCHEMA_VERSION
    max_version: ClassVar[int] = SCHEMA_VERSION


class Tier(StrEnum):
    """A runtime tier: a family of workers that run one kind of code."""

    WASM = "wasm"
    JS = "js"
    LINUX = "linux"


class Runtime(StrEnum):
    """What the function's code is; the scheduler maps it to a tier."""

    WASI = "wasi"  # a WASI preview-1 command module (`_start`, stdin -> stdout)
    COMPONENT = "component"  # a WASI preview-2 component exporting `wasi:cli/run` (stdin -> stdout)
    QUICKJS = "quickjs"  # JavaScript source run by QuickJS-NG compiled to WASI
    MICROPYTHON = "micropython"  # Python source run by MicroPython compiled to WASI
    CPYTHON = "cpython"  # Python 3.14 source run by the CPython WASI p2 component (frozen stdlib subset)
    BUN = "bun"  # a JS/TS module on Bun: Workers-style `export default { fetch }`, or a script
    DENO = "deno"  # the same on Deno, with Deno's permissions (nothing unless granted)
    PYTHON = "python"  # a Python 3 script in a Linux namespace sandbox
    SHELL = "shell"  # a bash script in a Linux namespace sandbox
    NODE = "node"  # a JavaScript file run by node in a Linux namespace sandbox


class Handler(StrEnum):
    """How a function takes its input and gives its result (the Wasmtime tier's guests)."""

    STDIO = "stdio"  # the input is stdin, stdout is the result
    HTTP = "http"  # stdin is a JSON request (method, path, headers, body), stdout a JSON response


class Status(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    RETRYING = "retrying"  # an attempt failed; the next one is due after a backoff

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.TIMED_OUT)


class Outcome(StrEnum):
    """How a finished invocation ended; what billing and metrics classify by."""

    SUCCESS = "success"  # ran to the end with exit code 0
    FUNCTION_ERROR = "function_error"  # non-zero exit, a trap in the guest, its fuel budget spent
    TIMEOUT = "timeout"  # wall-clock deadline reached
    OUT_OF_MEMORY = "out_of_memory"  # memory limit reached
    PLATFORM_ERROR = "platform_error"  # SoulBox could not run it


class EventType(StrEnum):
    ACCEPTED = "invocation.accepted"
    SCHEDULED = "invocation.scheduled"
    STARTED = "invocation.started"
    COMPLETED = "invocation.completed"
    FAILED = "invocation.failed"
    TIMED_OUT = "invocation.timed_out"
    RETRYING = "invocation.retrying"  # per attempt: this attempt failed, another follows
    # Sandbox lifecycle (schema version 2): published by the sandbox service with
    # ``sandbox_id`` set; ``paused`` and ``killed`` carry the running ``seconds``
    # since the sandbox was created or last resumed.
    SANDBOX_CREATED = "sandbox.created"
    SANDBOX_PAUSED = "sandbox.paused"
    SANDBOX_RESUMED = "sandbox.resumed"
    SANDBOX_KILLED = "sandbox.killed"


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    memory_mb: int = Field(64, ge=1, le=65536)
    timeout_ms: int = Field(10_000, ge=1, le=24 * 3600 * 1000)
    max_output_bytes: int = Field(1024 * 1024, ge=0, le=64 * 1024 * 1024)
    fuel: int | None = Field(
        None, ge=1, description="CPU budget in Wasmtime fuel units (about one per instruction); None: no budget"
    )

    @model_serializer(mode="wrap")
    def _omit_unset_fuel(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # No budget serializes exactly as before fuel existed: readers that forbid unknown
        # fields keep decoding such limits, and a function's version hash does not change.
        data: dict[str, object] = handler(self)
        if data.get("fuel") is None:
            data.pop("fuel", None)
        return data


class Permissions(BaseModel):
    """What a function may reach besides its own code; nothing by default.

    ``net`` lists hosts (``api.example.com``, ``10.0.0.1:8080``), ``read`` and
    ``write`` paths, ``run`` program names. Enforced by the tiers that can
    (Deno's permission flags; Wasmtime preopens each ``read`` directory
    read-only and grants nothing else).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    net: list[str] = Field(default_factory=list)
    read: list[str] = Field(default_factory=list)
    write: list[str] = Field(default_factory=list)
    run: list[str] = Field(default_factory=list)


class RetryPolicy(BaseModel):
    """How a failed asynchronous invocation is tried again: exponential backoff with jitter."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_attempts: int = Field(3, ge=1, le=100, description="attempts in all, the first included")
    base_delay_ms: int = Field(200, ge=0, le=3_600_000)
    max_delay_ms: int = Field(30_000, ge=0, le=24 * 3_600_000)

    def delay_s(self, attempt: int, jitter: float) -> float:
        """The wait after failed ``attempt`` (1-based); ``jitter`` in [0, 1) scales it into its upper half."""
        delay = min(self.max_delay_ms, self.base_delay_ms * 2 ** min(attempt - 1, 40))
        return float(delay) * (0.5 + 0.5 * jitter) / 1000


class FunctionSpec(Message):
    """A deployed function, as stored in the function registry."""

    tenant: Name
    name: Name
    runtime: Runtime = Runtime.WASI
    artifact: str = Field(description="sha256 of the uploaded module, the object store key")
    artifact_size: int
    limits: Limits = Limits()
    env: dict[str, str] = Field(default_factory=dict, description="environment bindings given to the code")
    secrets: dict[str, str] = Field(
        default_factory=dict, description="env var -> secret name; the worker opens the values at run time"
    )
    permissions: Permissions = Permissions()
    handler: Handler = Field(Handler.STDIO, description="stdio, or http: the HTTP handler contract (Wasmtime tier)")
    retry: RetryPolicy | None = Field(None, description="retries of failed asynchronous invocations")
    max_concurrency: int | None = Field(None, ge=1, description="invocations running at once, over all schedulers")
    packages: dict[str, str] = Field(
        default_factory=dict, description="npm packages bundled into the artifact at deploy (name -> version)"
    )
    version: str | None = Field(None, description="content hash of everything that defines a run (immutable)")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class InvocationRequest(Message):
    """What the gateway puts on the invocation stream."""

    id: str
    tenant: Name
    function: FunctionSpec
    input: bytes = b""
    reply_to: str | None = Field(None, description="core NATS subject awaiting the record")
    accepted_at: datetime = Field(default_factory=utcnow)
    trace_id: str | None = None
    trigger: str | None = Field(None, description="id of the trigger that caused it, if any")
    callback_url: str | None = Field(None, description="POSTed the finished record (asynchronous invocations)")


class Dispatch(Message):
    """Scheduler -> worker: run this invocation now."""

    request: InvocationRequest
    tier: Tier
    attempt: int = 1
    scheduled_at: datetime = Field(default_factory=utcnow)
    final: bool = Field(True, description="no retry follows a failure of this attempt")


class DispatchReply(Message):
    """Worker -> scheduler: the dispatch is finished (or refused)."""

    accepted: bool
    status: Status | None = None
    reason: str | None = None
    in_flight: int | None = None  # the worker's load once this answer is sent: fresher than its heartbeat


class InvocationError(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str  # trap, exit, timeout, out_of_memory, out_of_fuel, grant_refused, platform
    message: str


class InvocationRecord(Message):
    """The state of one invocation, kept in the invocations bucket."""

    id: str
    tenant: Name
    function: Name
    status: Status
    tier: Tier | None = None
    worker: str | None = None
    attempt: int = 1
    outcome: Outcome | None = None
    exit_code: int | None = None
    error: InvocationError | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    accepted_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    peak_memory_bytes: int | None = None
    timeout_ms: int | None = None
    trace_id: str | None = Field(None, description="the request's trace id (W3C when tracing is on)")


LIFECYCLE_EVENT_VERSION: Literal[2] = 2
"""Version 2 added the sandbox events and ``sandbox_id``, ``seconds``, ``cpu_ms``, ``egress_bytes``."""


class LifecycleEvent(Message):
    """One step of an invocation's (or a sandbox's) life, published on the events stream.

    ``id`` is ``<invocation id>.<type>`` (plus ``.<attempt>`` for the
    per-attempt ``scheduled`` and ``started``), so a re-published event is
    recognised as the same event by every consumer and by the stream's
    de-duplication, and an invocation has at most one terminal event.

    Version 2 (additive): sandbox events (``sandbox.*`` types, published with
    ``v=2`` so that version-1 readers reject them cleanly) carry ``sandbox_id``
    and leave ``invocation_id`` empty; their ``id`` is
    ``<sandbox id>.<type>.<n>``, unique per billed period. ``cpu_ms`` and
    ``egress_bytes`` are optional measurements any event may carry.
    """

    max_version: ClassVar[int] = LIFECYCLE_EVENT_VERSION
    id: str
    type: EventType
    invocation_id: str = ""  # empty on sandbox events
    tenant: Name
    function: Name
    tier: Tier | None = None
    worker: str | None = None
    attempt: int = 1
    at: datetime = Field(default_factory=utcnow)
    outcome: Outcome | None = None
    duration_ms: float | None = None
    peak_memory_bytes: int | None = None
    memory_limit_mb: int | None = None
    error: InvocationError | None = None
    sandbox_id: str | None = None
    seconds: float | None = Field(None, ge=0, description="sandbox running time billed by this event")
    cpu_ms: float | None = Field(None, ge=0, description="CPU time used, when the tier measures it")
    egress_bytes: int | None = Field(None, ge=0, description="bytes sent out, when the tier measures it")

    @classmethod
    def for_record(
        cls, type_: EventType, record: InvocationRecord, *, memory_limit_mb: int | None = None
    ) -> LifecycleEvent:
        suffix = type_.value.split(".", 1)[1]
        if type_ in (EventType.SCHEDULED, EventType.STARTED, EventType.RETRYING):
            suffix = f"{suffix}.{record.attempt}"
        return cls(
            id=f"{record.id}.{suffix}",
            type=type_,
            invocation_id=record.id,
            tenant=record.tenant,
            function=record.function,
            tier=record.tier,
            worker=record.worker,
            attempt=record.attempt,
            outcome=record.outcome,
            duration_ms=record.duration_ms,
            peak_memory_bytes=record.peak_memory_bytes,
            memory_limit_mb=memory_limit_mb,
            error=record.error,
        )


class WorkerHeartbeat(Message):
    """A worker's liveness and free capacity, put in the workers bucket."""

    worker_id: str
    tiers: list[Tier]
    capacity: int
    in_flight: int
    pid: int
    host: str
    started_at: datetime
    at: datetime = Field(default_factory=utcnow)
    draining: bool = False  # shutting down: send it nothing new
    sandbox_capacity: int = 0  # long-lived sandboxes it may host
    sandboxes: int = 0  # long-lived sandboxes handed out now (its warm pool is not counted: a create takes from it)


class LimitsRecord(Message):
    """Limits of one tenant or API key (KV ``sb_limits``); a field left None takes the settings' default."""

    requests_per_s: float | None = Field(None, gt=0)
    concurrent_sandboxes: int | None = Field(None, ge=0)
    invocations_per_day: int | None = Field(None, ge=0)
    gb_seconds_per_month: float | None = Field(None, ge=0)


class DeadLetter(Message):
    """An asynchronous invocation that failed on its last attempt."""

    request: InvocationRequest
    attempts: int
    status: Status
    outcome: Outcome | None = None
    error: InvocationError | None = None
    at: datetime = Field(default_factory=utcnow)


class ConcurrencyLeases(Message):
    """The running invocations of a function with a concurrency limit: invocation id -> lease expiry.

    Kept in the concurrency bucket and changed only by compare-and-set, so
    every scheduler sees one count; a lease of a scheduler that died expires.
    """

    leases: dict[str, datetime] = Field(default_factory=dict)


class Callback(Message):
    """A finished invocation whose record is to be POSTed to ``url`` (retried until delivered or given up)."""

    invocation_id: str
    tenant: Name
    url: str


class AliasTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: str = Field(pattern=r"^[0-9a-f]{12}$")
    weight: int = Field(1, ge=1, le=1000)


class FunctionAlias(Message):
    """A name for one or more versions of a function, with a traffic split; ``previous`` is what a rollback restores."""

    tenant: Name
    function: Name
    name: Name
    targets: list[AliasTarget] = Field(min_length=1, max_length=10)
    previous: list[AliasTarget] | None = None
    updated_at: datetime = Field(default_factory=utcnow)
