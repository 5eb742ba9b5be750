"""Settings: built once in ``main()`` and passed down through constructors.

Every value can be set by environment (``SOULBOX_`` prefix, ``__`` between
nested names, e.g. ``SOULBOX_NATS__URLS='["nats://a:4222","nats://b:4222"]'``)
or by a ``.env`` file. Nothing reads the environment anywhere else.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .tiersettings import JsSettings, LinuxSettings, SandboxSettings, WasmSettings

EMBEDDED_NATS_PORT = 14222  # not 4222: a NATS of somebody else may listen there


def _default_worker_id() -> str:
    # The id is a NATS subject token: no dots, spaces or wildcards.
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    return f"{host}-{uuid.uuid4().hex[:8]}"


class NatsSettings(BaseModel):
    urls: list[str] = [f"nats://127.0.0.1:{EMBEDDED_NATS_PORT}"]
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None
    connect_timeout: float = 2.0
    replicas: int = Field(1, ge=1, le=5, description="stream/bucket replicas (3 on a cluster)")


class EmbeddedNatsSettings(BaseModel):
    """The nats-server that ``soulbox up`` starts when no external one is given."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = EMBEDDED_NATS_PORT
    monitor_port: int = 18222


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8470
    # Below the NATS max_payload (8 MiB in infra/nats.conf) with room for the envelope.
    max_body_bytes: int = Field(6 * 1024 * 1024, ge=1024)
    max_module_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    sync_grace_s: float = Field(5.0, ge=0, description="extra wait over a function's timeout")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="keys accepted in X-API-KEY / Authorization: Bearer (none: no check)"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="deadline until a response starts (504 after it); invocations keep their own"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed by CORS (none: no CORS headers at all)"
    )
    hsts_max_age_s: int = Field(0, ge=0, description="Strict-Transport-Security max-age (0: no HSTS header)")


class OidcIssuerSettings(BaseModel):
    """An external OpenID Connect issuer whose tokens the gateway accepts for registered users."""

    issuer: str = Field(description="the tokens' iss claim, e.g. https://login.example.com/")
    jwks_url: str = Field(description="where the issuer publishes its signing keys (JWKS)")
    audience: str = Field(description="the aud claim SoulBox's tokens from this issuer carry")
    tenant_claim: str = Field("soulbox_tenant", description="the claim naming the tenant")
    tenant: str | None = Field(None, description="the tenant of every token of this issuer (instead of a claim)")


class IdentitySettings(BaseModel):
    """Tenants, API keys, JWTs and OAuth2 clients (gateway/identity)."""

    required: bool = Field(False, description="refuse requests without credentials even when gateway.api_keys is empty")
    issuer: str = Field("soulbox", description="iss (and aud) of the JWTs SoulBox signs")
    token_ttl_s: int = Field(900, ge=30, le=24 * 3600, description="lifetime of client-credentials tokens")
    signing_key_files: list[Path] = Field(
        default_factory=list,
        description="PEM private keys (EC P-256) for JWTs; the first signs, all verify (empty: one kept in NATS KV)",
    )
    oidc_issuers: list[OidcIssuerSettings] = Field(default_factory=list)
    jwks_cache_s: float = Field(300.0, ge=0, description="how long an external issuer's JWKS is reused")
    leeway_s: float = Field(10.0, ge=0, description="clock skew allowed on exp/nbf/iat")


class QueueSettings(BaseModel):
    """Bounds of the invocation stream; past them the gateway answers 429."""

    max_msgs: int = Field(1_000_000, ge=1)
    max_bytes: int = Field(-1, ge=-1, description="-1: unbounded")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After of a 429 when the queue is full")


class LimitsSettings(BaseModel):
    """Default rate limits and quotas; a tenant's or API key's record in KV ``sb_limits`` overrides them.

    None: unlimited. Quotas (sandboxes, invocations, GB-seconds) are per tenant; requests/s per tenant and per key.
    """

    requests_per_s: float | None = Field(None, gt=0, description="requests per second of a tenant")
    key_requests_per_s: float | None = Field(None, gt=0, description="requests per second of one API key")
    concurrent_sandboxes: int | None = Field(None, ge=0, description="live (running or paused) sandboxes")
    invocations_per_day: int | None = Field(None, ge=0, description="billed invocations per UTC day")
    gb_seconds_per_month: float | None = Field(None, ge=0, description="billed GB-seconds per UTC month")
    window_s: float = Field(1.0, gt=0, le=60, description="rate-limit window; its limit is requests_per_s * window_s")
    chunk_fraction: float = Field(
        0.05, gt=0, le=1, description="share of a window's limit a gateway claims at once from the shared counter"
    )
    sandbox_retry_after_s: float = Field(10.0, gt=0, description="Retry-After when the sandbox quota is full")


class TriggerSettings(BaseModel):
    cron_horizon_s: float = Field(
        1.0, gt=0, description="how often the cron loop looks again at the triggers (and the clock)"
    )
    callback_attempts: int = Field(8, ge=1, description="deliveries of a completion callback before giving up")
    callback_base_delay_s: float = Field(1.0, ge=0, description="first retry delay of a callback; doubles")
    callback_max_delay_s: float = Field(300.0, ge=0)
    callback_timeout_s: float = Field(10.0, gt=0)


class FunctionDefaults(BaseModel):
    memory_mb: int = 64
    timeout_ms: int = 10_000
    max_memory_mb: int = 4096
    max_timeout_ms: int = 15 * 60 * 1000
    max_output_bytes: int = 1024 * 1024


class SchedulerSettings(BaseModel):
    max_in_flight: int = Field(2048, ge=1)
    fetch_batch: int = Field(256, ge=1)
    dispatch_grace_s: float = Field(10.0, ge=0)
    no_worker_wait_s: float = Field(30.0, ge=0, description="how long to hold an invocation when no worker is live")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port (0: not served)")


class WorkerSettings(BaseModel):
    id: str = Field(default_factory=_default_worker_id)
    capacity: int = Field(default_factory=lambda: max(2, 2 * (os.cpu_count() or 1)), ge=1)
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_ttl_s: float = Field(3.0, gt=0)
    module_cache_size: int = Field(256, ge=1)
    epoch_tick_ms: int = Field(10, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port (0: not served)")


class EventsSettings(BaseModel):
    batch: int = Field(1000, ge=1)
    linger_s: float = Field(0.02, ge=0, description="how long a consumer lets events gather after a short batch")
    ack_wait_s: float = Field(10.0, gt=0, description="how long a taken event may stay unacknowledged")
    pin_timeout_s: float = Field(
        15.0, gt=0, description="how long the serving events process may go without pulling before a standby takes over"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9470


class LogsSettings(BaseModel):
    """Invocation output kept in JetStream (stream ``SB_LOGS``): the logs API and streamed invocations read it."""

    max_age_s: float = Field(24 * 3600, gt=0, description="how long output is kept")
    max_bytes: int = Field(1024**3, ge=-1, description="size cap of the stream; oldest output goes first (-1: none)")
    flush_ms: float = Field(20.0, gt=0, description="how long a worker gathers output before publishing it")
    chunk_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024, description="largest output piece per message")
    follow_max_s: float = Field(3600.0, gt=0, description="longest a ?follow=true request stays open")


class S3Settings(BaseModel):
    """An S3-compatible object store for usage and audit exports; no bucket: no exports."""

    bucket: str | None = None
    prefix: str = Field("soulbox/", description="prepended to every exported key")
    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; default: AWS")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None


class PriceList(BaseModel):
    """What one unit of each metered quantity costs (any currency, consistently)."""

    per_gb_second: float = Field(0.0000166667, ge=0)
    per_invocation: float = Field(0.0000002, ge=0)
    per_sandbox_second: float = Field(0.000014, ge=0)
    per_cpu_second: float = Field(0.0, ge=0)
    per_egress_gb: float = Field(0.09, ge=0)


class BillingSettings(BaseModel):
    prices: PriceList = PriceList()
    export_interval_s: float = Field(0.0, ge=0, description="periodic usage export to S3 (0: off)")
    export_granularity: str = Field("hour", pattern="^(hour|day)$", description="bucket size of exported reports")


class AuditSettings(BaseModel):
    segment_records: int = Field(10_000, ge=1, description="seal an export segment at this many records")
    segment_seconds: float = Field(300.0, gt=0, description="... or when its oldest record is this old")
    export_interval_s: float = Field(0.0, ge=0, description="how often to look for a segment to export (0: off)")
    max_age_s: float = Field(
        0.0, ge=0, description="drop records older than this from the stream, once exported (0: keep all)"
    )


class SecretsSettings(BaseModel):
    """The master key (key-encryption key) of the secrets store and of the signed-URL keys."""

    master_key: SecretStr | None = Field(
        None, description="base64 of 32 random bytes; default: the key in master_key_file"
    )
    master_key_file: Path | None = Field(
        None,
        description="file holding the base64 master key, made (mode 0600) on first start when absent; "
        "default: <data_dir>/secrets/master.key",
    )
    previous_master_keys: list[SecretStr] = Field(
        default_factory=list,
        description="retired master keys (base64), kept to unwrap data keys until the gateway has rewrapped them",
    )


class SignedUrlSettings(BaseModel):
    max_expires_s: int = Field(7 * 24 * 3600, ge=1, description="longest lifetime a signed URL may be given")
    default_expires_s: int = Field(3600, ge=1)
    rotation_grace_s: float = Field(
        24 * 3600.0, ge=0, description="how long URLs signed with a tenant's previous key stay valid after rotation"
    )


class TracingSettings(BaseModel):
    """OpenTelemetry spans exported over OTLP/HTTP (Jaeger, Tempo, an OTel collector); off by default."""

    enabled: bool = False
    endpoint: str = Field("http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces URL (path included)")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every export, e.g. authorization")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept; callers' decisions are kept")
    service_name: str | None = Field(None, description="default: soulbox-<process> (gateway, scheduler, worker...)")
    export_delay_s: float = Field(2.0, gt=0, description="longest a finished span waits before its batch is sent")
    max_queue_size: int = Field(8192, ge=1, description="spans queued for export at most (more are dropped)")
    timeout_s: float = Field(10.0, gt=0, description="timeout of one export request")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOULBOX_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    data_dir: Path = Path(".soulbox")
    log_level: str = "info"
    log_format: str = Field("json", pattern="^(json|console)$")
    tenant: str = Field("default", description="the default tenant: the platform operator's (gateway.api_keys)")
    invocation_ttl_s: float = Field(24 * 3600, gt=0, description="how long invocation records are kept")
    nats: NatsSettings = NatsSettings()
    embedded_nats: EmbeddedNatsSettings = EmbeddedNatsSettings()
    gateway: GatewaySettings = GatewaySettings()
    functions: FunctionDefaults = FunctionDefaults()
    wasm: WasmSettings = WasmSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    worker: WorkerSettings = WorkerSettings()
    events: EventsSettings = EventsSettings()
    billing: BillingSettings = BillingSettings()
    audit: AuditSettings = AuditSettings()
    s3: S3Settings = S3Settings()
    js: JsSettings = JsSettings()
    linux: LinuxSettings = LinuxSettings()
    sandboxes: SandboxSettings = SandboxSettings()
    queue: QueueSettings = QueueSettings()
    triggers: TriggerSettings = TriggerSettings()
    secrets: SecretsSettings = SecretsSettings()
    signed_urls: SignedUrlSettings = SignedUrlSettings()
    logs: LogsSettings = LogsSettings()
    identity: IdentitySettings = IdentitySettings()
    tracing: TracingSettings = TracingSettings()
    limits: LimitsSettings = LimitsSettings()
