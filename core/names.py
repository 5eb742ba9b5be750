"""Every NATS subject, stream, consumer and bucket name SoulBox uses.

The whole wire topology is here so that components never spell a subject by
hand. Subjects are namespaced under ``sb.`` so SoulBox can share an account
with other applications.
"""

from __future__ import annotations

from typing import Final

from .errors import InvalidRequest
from .schemas import NAME_RE

# Streams ------------------------------------------------------------------
INVOCATIONS_STREAM: Final = "SB_INVOCATIONS"
"""Work queue of accepted invocations (de-duplicated by invocation id)."""
INVOCATIONS_SUBJECTS: Final = "sb.invocations.>"

EVENTS_STREAM: Final = "SB_EVENTS"
"""Lifecycle events; every consumer kind reads all of them."""
EVENTS_SUBJECTS: Final = "sb.events.>"

AUDIT_STREAM: Final = "SB_AUDIT"
"""Append-only audit log (API calls and lifecycle events)."""
AUDIT_SUBJECTS: Final = "sb.audit.>"

DEAD_LETTERS_STREAM: Final = "SB_DEAD_LETTERS"
"""Asynchronous invocations that failed on their last attempt, one subject per invocation."""
DEAD_LETTERS_SUBJECTS: Final = "sb.deadletters.>"

CALLBACKS_STREAM: Final = "SB_CALLBACKS"
"""Work queue of completion callbacks to deliver (de-duplicated by invocation id)."""
CALLBACKS_SUBJECTS: Final = "sb.callbacks.>"

AUDIT_INTAKE_STREAM: Final = "SB_AUDIT_INTAKE"
"""API-call records on their way into the chained audit log (written by the audit consumer only)."""
AUDIT_INTAKE_SUBJECTS: Final = "sb.audit_in.>"
AUDIT_INTAKE_API_SUBJECT: Final = "sb.audit_in.api"
AUDIT_INTAKE_SECRETS_SUBJECT: Final = "sb.audit_in.secrets"
"""Secret reads (one record per decrypt, made by the worker that decrypts)."""

LOGS_STREAM: Final = "SB_LOGS"
"""Output of invocations as it is produced (chunks, then an end entry per attempt), kept with retention."""
LOGS_SUBJECTS: Final = "sb.logs.>"

RATELIMIT_STREAM: Final = "SB_RATELIMITS"
"""Counters (``Nats-Incr``) of the requests admitted per rate-limit scope and time window, shared by every gateway."""
RATELIMIT_SUBJECTS: Final = "sb.ratelimit.>"

# Durable consumers ----------------------------------------------------------
SCHEDULER_CONSUMER: Final = "scheduler"
EVENT_CONSUMERS: Final = ("billing", "audit", "metrics")
"""The durables of lifecycle events before one durable fed all three (migrated by events/topology.py)."""
EVENTS_CONSUMER: Final = "events"
"""The durable (and its pinned priority group) that reads every lifecycle event once for billing, audit, metrics."""
CALLBACKS_CONSUMER: Final = "callbacks"

# Key-value buckets and object store ----------------------------------------------
FUNCTIONS_BUCKET: Final = "sb_functions"
INVOCATIONS_BUCKET: Final = "sb_invocations"
WORKERS_BUCKET: Final = "sb_workers"
BILLING_BUCKET: Final = "sb_billing"
ARTIFACTS_BUCKET: Final = "sb_artifacts"
SANDBOXES_BUCKET: Final = "sb_sandboxes"
VERSIONS_BUCKET: Final = "sb_function_versions"
"""Every deployed version of every function, by content hash; written once, never changed."""
ALIASES_BUCKET: Final = "sb_aliases"
TRIGGERS_BUCKET: Final = "sb_triggers"
CRON_BUCKET: Final = "sb_cron"
"""Per cron trigger, the last claimed tick (compare-and-set: one firing per tick)."""
CONCURRENCY_BUCKET: Final = "sb_concurrency"
"""Per function with a concurrency limit, the leases of its running invocations."""
WEBHOOKS_SEEN_BUCKET: Final = "sb_webhooks_seen"
"""Per webhook trigger, the signed requests already accepted (create-only: a replay is refused)."""

TENANT_KEYS_BUCKET: Final = "sb_tenant_keys"
"""Per-tenant secrets behind the pseudonyms in the audit log (deleted on erasure)."""
SECRETS_BUCKET: Final = "sb_secrets"
"""Tenants' secrets, envelope-encrypted (``<tenant>.<name>``; see core/secrets.py)."""
URL_KEYS_BUCKET: Final = "sb_url_keys"
"""Per tenant, the keys that sign its URLs, envelope-encrypted (``<tenant>``)."""
SIGNED_NONCES_BUCKET: Final = "sb_signed_nonces"
"""Nonces of signed URLs already used (create-only: a replay is refused)."""
AUDIT_STATE_BUCKET: Final = "sb_audit_state"
"""The audit exporter's progress (last exported sequence and hash)."""
AUDIT_CONSUMER: Final = "audit"
LIMITS_BUCKET: Final = "sb_limits"
"""Rate limits and quotas configured per tenant (``tenant.<tenant>``) and per API key (``key.<key id>``)."""

TENANTS_BUCKET: Final = "sb_tenants"
"""Tenants (teams), by name."""
USERS_BUCKET: Final = "sb_users"
"""Users (external OIDC identities) with their role, by ``<tenant>.<user id>``."""
API_KEYS_BUCKET: Final = "sb_api_keys"
"""API keys by their visible id (the prefix); only a SHA-256 of each secret is kept."""
OAUTH_CLIENTS_BUCKET: Final = "sb_oauth_clients"
"""OAuth2 client-credentials clients by client id; only a SHA-256 of each secret is kept."""
JWT_KEYS_BUCKET: Final = "sb_jwt_keys"
"""The private keys SoulBox signs JWTs with, by key id (kid)."""


def invocation_subject(tenant: str) -> str:
    return f"sb.invocations.{tenant}"


def event_subject(event_type: str) -> str:
    """``invocation.completed`` -> ``sb.events.invocation.completed``."""
    return f"sb.events.{event_type}"


NO_TENANT: Final = "_"
"""The audit subject token for records that carry no valid tenant name."""


def tenant_token(tenant: str | None) -> str:
    """``tenant`` if it is a valid name (so it cannot inject ``.``/``*``/``>``), else ``_``."""
    if tenant is not None and NAME_RE.match(tenant):
        return tenant
    return NO_TENANT


def audit_event_subject(tenant: str) -> str:
    """Lifecycle events of the tenant's invocations: ``sb.audit.<tenant>.event``."""
    return f"sb.audit.{tenant_token(tenant)}.event"


def audit_api_subject(tenant: str | None) -> str:
    """API calls made by (or for) the tenant: ``sb.audit.<tenant|_>.api``."""
    return f"sb.audit.{tenant_token(tenant)}.api"


def audit_tenant_filter(tenant: str) -> str:
    """Every audit subject of ``tenant``; ``_`` selects the records without a tenant."""
    if tenant != NO_TENANT and not NAME_RE.match(tenant):
        raise InvalidRequest(f"invalid tenant name {tenant!r}")
    return f"sb.audit.{tenant}.>"


WORKER_HEARTBEAT_SUBJECT: Final = "sb.workers.heartbeat"
"""Core NATS (not JetStream): liveness must not depend on stream consumers."""


def worker_run_subject(worker_id: str) -> str:
    """Core NATS request subject on which a worker accepts dispatches."""
    return f"sb.workers.{worker_id}.run"


SANDBOX_CREATE_SUBJECT: Final = "sb.sandboxes.create"
"""Core NATS request subject on which the schedulers (queue group) place new sandboxes."""
SANDBOX_CREATE_QUEUE: Final = "schedulers"


SANDBOX_METRICS_SUBJECTS: Final = "sb.metrics.sandboxes.>"
"""Core NATS: every second, each worker's samples of its running sandboxes (telemetry: not stored)."""


def sandbox_metrics_subject(worker_id: str) -> str:
    return f"sb.metrics.sandboxes.{worker_id}"


def worker_sandbox_subject(worker_id: str, action: str = "*") -> str:
    """Core NATS request subject on which a worker creates (``create``) and steers (``control``) its sandboxes."""
    return f"sb.workers.{worker_id}.sandboxes.{action}"


def worker_tunnel_subject(worker_id: str) -> str:
    """Core NATS subject of a worker's HTTP tunnel server (every client->server frame).

    Outside ``sb.workers.`` so that bulk stream data never reaches a ``sb.workers.>`` listener.
    """
    return f"sb.tunnel.{worker_id}"


def function_key(tenant: str, name: str) -> str:
    return f"{tenant}.{name}"


def billing_key(tenant: str, function: str, unit_id: str) -> str:
    """``<tenant>.<function>.<unit>``: the unit is an invocation id, or a sandbox event id with ``_`` for ``.``."""
    return f"{tenant}.{function}.{unit_id.replace('.', '_')}"


def secret_key(tenant: str, name: str) -> str:
    return f"{tenant}.{name}"


def signed_nonce_key(tenant: str, nonce: str) -> str:
    return f"{tenant}.{nonce}"


def trigger_key(tenant: str, trigger_id: str) -> str:
    return f"{tenant}.{trigger_id}"


def webhook_seen_key(tenant: str, trigger_id: str, identity: str) -> str:
    """``<tenant>.<trigger>.<identity>``: the identity is a hex digest of the signed request."""
    return f"{tenant}.{trigger_id}.{identity}"


def dead_letter_subject(tenant: str, invocation_id: str) -> str:
    return f"sb.deadletters.{tenant}.{invocation_id}"


def dead_letters_filter(tenant: str) -> str:
    return f"sb.deadletters.{tenant}.*"


def triggers_queue_group(tenant: str, trigger_id: str) -> str:
    """Queue group of the trigger services for one NATS trigger: each message reaches one replica.

    One group per trigger, so two triggers on the same subject both fire.
    """
    return f"soulbox-triggers-{tenant}-{trigger_id}"


def callback_subject(tenant: str) -> str:
    return f"sb.callbacks.{tenant}"


def version_key(tenant: str, function: str, version: str) -> str:
    return f"{tenant}.{function}.{version}"


def alias_key(tenant: str, function: str, alias: str) -> str:
    return f"{tenant}.{function}.{alias}"


def invocation_logs_subject(tenant: str, invocation_id: str) -> str:
    """``sb.logs.inv.<tenant>.<invocation id>``: one invocation's output; the tenant token scopes readers."""
    return f"sb.logs.inv.{tenant_token(tenant)}.{invocation_id}"


def sandbox_logs_subject(tenant: str, sandbox_id: str) -> str:
    """``sb.logs.sbx.<tenant>.<sandbox id>``: a sandbox's log lines, kept after it ended."""
    return f"sb.logs.sbx.{tenant_token(tenant)}.{sandbox_id}"


def user_key(tenant: str, user_id: str) -> str:
    return f"{tenant}.{user_id}"


def ratelimit_subject(scope: str, window: int) -> str:
    """The counter of one rate-limit scope (``t.<tenant>`` or ``k.<key token>``) in one time window."""
    return f"sb.ratelimit.{scope}.{window}"


def tenant_limits_key(tenant: str) -> str:
    return f"tenant.{tenant}"


def api_key_limits_key(key_token: str) -> str:
    return f"key.{key_token}"
