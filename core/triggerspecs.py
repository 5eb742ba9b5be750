"""Triggers as stored in the triggers bucket: webhooks, HTTP routes, NATS subjects and cron schedules."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .schemas import Message, Name, utcnow


class TriggerKind(StrEnum):
    WEBHOOK = "webhook"  # POST /v1/hooks/{tenant}/{id}, signed
    HTTP = "http"  # a method + path under /run/{tenant}
    NATS = "nats"  # a message on a NATS subject
    CRON = "cron"  # a schedule


class SignatureScheme(StrEnum):
    HMAC = "hmac"  # X-Soulbox-Timestamp + X-Soulbox-Signature: hex HMAC-SHA256 of "<timestamp>.<body>"
    GITHUB = "github"  # X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>
    STRIPE = "stripe"  # Stripe-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>.<body>">


class MissedRuns(StrEnum):
    SKIP = "skip"  # ticks passed while no trigger service ran are dropped
    RUN_ONCE = "run_once"  # one run for the latest missed tick, then on schedule


MAX_WEBHOOK_TOLERANCE_S: Final = 86_400
"""The largest ``WebhookConfig.tolerance_s``; bounds how long a seen webhook is remembered."""


class WebhookConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    scheme: SignatureScheme = SignatureScheme.HMAC
    secret: str = Field(min_length=16, max_length=256)
    tolerance_s: int = Field(
        300, ge=1, le=MAX_WEBHOOK_TOLERANCE_S, description="oldest accepted timestamp (hmac, stripe)"
    )
    sync: bool = Field(False, description="answer with the function's output instead of 202")


class HttpRouteConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str = Field("GET", pattern=r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)$")
    path: str = Field(description="under /run, e.g. /orders/{id}", pattern=r"^(/[A-Za-z0-9._~{}-]+)+/?$|^/$")


_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class NatsTriggerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    subject: str = Field(max_length=255, description="a subject or wildcard, not under sb., $ or _INBOX.")

    @field_validator("subject")
    @classmethod
    def _user_subject(cls, value: str) -> str:
        tokens = value.split(".")
        literal = [t for i, t in enumerate(tokens) if t != "*" and not (t == ">" and i == len(tokens) - 1)]
        if not all(_SUBJECT_TOKEN.match(t) for t in literal) or not literal:
            raise ValueError("a subject is dot-separated tokens of [A-Za-z0-9_-], `*`, and `>` last")
        if tokens[0] in ("sb", "_INBOX") or tokens[0].startswith("$") or tokens[0] in ("*", ">"):
            raise ValueError("sb.*, $*, _INBOX.* and subjects starting with a wildcard are reserved")
        return value


class CronConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    expression: str = Field(description="5 fields, or 6 with seconds last", max_length=200)
    timezone: str = Field("UTC", description="IANA time zone the expression is read in")
    missed: MissedRuns = MissedRuns.SKIP


class TriggerSpec(Message):
    """A trigger: what causes its function to be invoked, stored in the triggers bucket."""

    tenant: Name
    id: Name
    function: Name
    kind: TriggerKind
    enabled: bool = True
    webhook: WebhookConfig | None = None
    http: HttpRouteConfig | None = None
    nats: NatsTriggerConfig | None = None
    cron: CronConfig | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _config_of_kind(self) -> TriggerSpec:
        given = {kind for kind in TriggerKind if getattr(self, kind.value) is not None}
        if given != {self.kind}:
            raise ValueError(f"a {self.kind.value} trigger takes exactly the `{self.kind.value}` configuration")
        return self


class CronState(Message):
    """The last tick of a cron trigger that was claimed; advanced by compare-and-set."""

    tick: datetime
