"""The public JSON shapes of the HTTP API (rendering of the wire schemas)."""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import BaseModel, Field

from soulbox.core.schemas import FunctionSpec, InvocationRecord, Limits, Permissions, RetryPolicy


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable error code")
    message: str
    invocation_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ArtifactOut(BaseModel):
    sha256: str
    size: int


class FunctionOut(BaseModel):
    name: str
    tenant: str
    runtime: str
    artifact: ArtifactOut
    limits: Limits
    env: list[str] = Field(description="names of the environment bindings (values are not shown)")
    secrets: dict[str, str] = Field(default_factory=dict, description="env var -> name of the secret bound to it")
    permissions: Permissions
    retry: RetryPolicy | None = None
    max_concurrency: int | None = None
    packages: dict[str, str] = Field(
        default_factory=dict, description="npm packages bundled at deploy from package_json dependencies"
    )
    version: str | None = Field(None, description="content hash of this deploy; invoke it with ?version=")
    detected_from: str | None = Field(
        None, description="deploy responses only: why Bun or Deno was chosen for a `js`/`ts` deploy"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, spec: FunctionSpec) -> FunctionOut:
        return cls(
            name=spec.name,
            tenant=spec.tenant,
            runtime=spec.runtime.value,
            artifact=ArtifactOut(sha256=spec.artifact, size=spec.artifact_size),
            limits=spec.limits,
            env=sorted(spec.env),
            secrets=spec.secrets,
            permissions=spec.permissions,
            retry=spec.retry,
            max_concurrency=spec.max_concurrency,
            packages=spec.packages,
            version=spec.version,
            created_at=spec.created_at,
            updated_at=spec.updated_at,
        )


class FunctionList(BaseModel):
    functions: list[FunctionOut]


class OutputOut(BaseModel):
    data: str = Field(description="the captured bytes, as text (utf-8) or base64 per `encoding`")
    encoding: str = Field(description="utf-8 or base64")
    size: int = Field(description="bytes the function wrote, kept or not")
    truncated: bool


def _output(data: bytes, size: int, truncated: bool) -> OutputOut:
    try:
        return OutputOut(data=data.decode("utf-8"), encoding="utf-8", size=size, truncated=truncated)
    except UnicodeDecodeError:
        return OutputOut(data=base64.b64encode(data).decode(), encoding="base64", size=size, truncated=truncated)


class InvocationErrorOut(BaseModel):
    kind: str
    message: str


class InvocationOut(BaseModel):
    id: str
    tenant: str
    function: str
    status: str
    outcome: str | None
    tier: str | None
    worker: str | None
    attempt: int
    exit_code: int | None
    error: InvocationErrorOut | None
    stdout: OutputOut
    stderr: OutputOut
    accepted_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    peak_memory_bytes: int | None
    timeout_ms: int | None

    @classmethod
    def of(cls, record: InvocationRecord) -> InvocationOut:
        return cls(
            id=record.id,
            tenant=record.tenant,
            function=record.function,
            status=record.status.value,
            outcome=record.outcome.value if record.outcome else None,
            tier=record.tier.value if record.tier else None,
            worker=record.worker,
            attempt=record.attempt,
            exit_code=record.exit_code,
            error=InvocationErrorOut(kind=record.error.kind, message=record.error.message) if record.error else None,
            stdout=_output(record.stdout, record.stdout_bytes, record.stdout_truncated),
            stderr=_output(record.stderr, record.stderr_bytes, record.stderr_truncated),
            accepted_at=record.accepted_at,
            scheduled_at=record.scheduled_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            duration_ms=record.duration_ms,
            peak_memory_bytes=record.peak_memory_bytes,
            timeout_ms=record.timeout_ms,
        )


class InvocationAccepted(BaseModel):
    id: str
    status: str
    url: str
