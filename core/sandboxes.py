"""Sandbox messages: the record kept in KV and the requests that create and steer sandboxes.

A sandbox (E2B's unit) is a long-lived Linux namespace sandbox on one worker.
Its :class:`SandboxRecord` lives in the sandboxes bucket under its id, written
by the worker that hosts it; the gateway reads records for get/list and sends
:class:`SandboxCreate` to the schedulers (placement) and
:class:`SandboxControl` to the hosting worker. Every reply is a
:class:`SandboxReply`. Same versioning rules as :mod:`.schemas`.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .errors import InvalidRequest
from .schemas import Message, Name, utcnow

SANDBOX_ID_PATTERN = r"^[a-z0-9]{8,40}$"
SANDBOX_ID_RE = re.compile(SANDBOX_ID_PATTERN)
SandboxId = Annotated[str, StringConstraints(pattern=SANDBOX_ID_PATTERN)]
TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Template = Annotated[str, StringConstraints(pattern=TEMPLATE_PATTERN)]


def checked_sandbox_id(value: str) -> str:
    """``value`` if it can be a sandbox id (so also a NATS subject token), else ``InvalidRequest``."""
    if SANDBOX_ID_RE.match(value):
        return value
    raise InvalidRequest(f"invalid sandbox id {value!r}")


class SandboxState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"


class SandboxNetwork(BaseModel):
    """Network egress asked for at create; none by default.

    ``internet`` allows every public IPv4 destination; ``allow_out`` lists
    destinations (``CIDR`` or address, optionally ``:port`` or ``:low-high``)
    allowed even when ``deny_out`` (CIDRs) covers them, E2B's rule. Private,
    loopback and link-local ranges and the host itself are refused whatever is
    listed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    internet: bool = False
    allow_out: list[str] = Field(default_factory=list, max_length=256)
    deny_out: list[str] = Field(default_factory=list, max_length=256)

    @property
    def enabled(self) -> bool:
        return self.internet or bool(self.allow_out)


class SandboxRecord(Message):
    """A live sandbox, as the gateway lists and describes it."""

    sandbox_id: SandboxId
    tenant: Name
    template: Template
    worker_id: str
    state: SandboxState
    started_at: datetime
    end_at: datetime  # when the timeout kills (or pauses) it; while paused, the remaining time is kept
    remaining_s: float | None = None  # set while paused: the timeout left when it was paused
    auto_pause: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    cpu_count: int
    memory_mb: int
    disk_mb: int
    envd_version: str
    access_token: str  # what envd wants in X-Access-Token; returned only to the creator / connector
    traffic_token: str = ""  # what guarded ports (the code interpreter) accept in E2B-Traffic-Access-Token
    network: SandboxNetwork | None = None  # the egress it was given; None: no network


class SandboxCreate(Message):
    """Gateway -> scheduler -> worker: start a sandbox with this id."""

    sandbox_id: SandboxId
    tenant: Name
    template: Template
    timeout_s: int = Field(ge=1)
    auto_pause: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(
        default_factory=dict, description="env var -> secret name; the hosting worker opens the values"
    )
    network: SandboxNetwork | None = None  # None: no network


ControlOp = Literal["kill", "pause", "resume", "set_timeout", "metrics", "logs"]


class SandboxControl(Message):
    """Gateway -> hosting worker: change one sandbox."""

    sandbox_id: SandboxId
    op: ControlOp
    timeout_s: int | None = Field(None, ge=0)  # set_timeout, resume


class SandboxMetric(Message):
    """One usage sample of a sandbox (its cgroup)."""

    at: datetime = Field(default_factory=utcnow)
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int
    # Cumulative since the sandbox started: its veth (0 without egress) and its cgroup's block I/O.
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0


class SandboxUsage(BaseModel):
    """One running sandbox's latest sample, as a worker reports it every second."""

    model_config = ConfigDict(frozen=True)
    sandbox_id: str
    tenant: str
    template: str
    metric: SandboxMetric


class SandboxMetricsBatch(Message):
    """Worker -> anyone listening (core NATS, not stored): the samples of all its running sandboxes."""

    worker_id: str
    at: datetime = Field(default_factory=utcnow)
    sandboxes: list[SandboxUsage] = Field(default_factory=list)


class SandboxLogLine(BaseModel):
    """One line of a sandbox's log: its daemons' output and its lifecycle."""

    model_config = ConfigDict(frozen=True)
    at: datetime
    level: str = "info"
    message: str


class SandboxLogBatch(Message):
    """Worker -> ``SB_LOGS``: lines of a handed-out sandbox's log, in order; ``end`` once the sandbox is gone."""

    lines: list[SandboxLogLine] = Field(default_factory=list)
    end: bool = False


class SandboxReply(Message):
    """The answer to a create or control request: the record after the change, or an error."""

    record: SandboxRecord | None = None
    metrics: list[SandboxMetric] = Field(default_factory=list)
    logs: list[SandboxLogLine] = Field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    sandboxes: int | None = None  # the worker's sandboxes in use after this request: fresher than its heartbeat
