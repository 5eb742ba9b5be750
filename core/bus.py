"""Connecting to NATS and declaring the JetStream topology.

``ensure_topology`` is idempotent: every component may call it at start, in
any order, many replicas at once; existing streams are updated in place when
their configuration differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from . import names
from .errors import Unavailable
from .logging import get_logger
from .settings import Settings
from .triggerspecs import MAX_WEBHOOK_TOLERANCE_S

log = get_logger(__name__)

# How long a re-sent invocation id is recognised as the same invocation.
DEDUPE_WINDOW_S = 10 * 60.0
CANNOT_CANCEL_DENY_PURGE = 10052
# A signed timestamp is accepted up to a tolerance either side of now, so a request stays
# replayable for twice the tolerance; the margin covers clock skew between gateways and NATS.
WEBHOOKS_SEEN_TTL_S = 2 * MAX_WEBHOOK_TOLERANCE_S + 10 * 60.0


async def connect(settings: Settings, *, name: str) -> NATS:
    """Connect with the configured servers and credentials; reconnect forever."""
    s = settings.nats
    options: dict[str, object] = {
        "servers": s.urls,
        "name": name,
        "connect_timeout": s.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
    }
    if s.user:
        options["user"] = s.user
    if s.password:
        options["password"] = s.password.get_secret_value()
    if s.token:
        options["token"] = s.token.get_secret_value()
    if s.creds_file:
        options["user_credentials"] = str(s.creds_file)

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=str(exc))

    client: list[NATS] = []

    async def on_disconnect() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own close(), not an outage
        log.warning("nats.disconnected")

    async def on_reconnect() -> None:
        log.info("nats.reconnected")

    try:
        nc = await nats.connect(
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **options,  # type: ignore[arg-type]
        )
    except Exception as exc:  # nats raises several unrelated types here
        raise Unavailable(f"cannot connect to NATS at {', '.join(s.urls)}: {exc}") from exc
    client.append(nc)
    return nc


@dataclass(frozen=True, slots=True)
class Buckets:
    functions: KeyValue
    invocations: KeyValue
    workers: KeyValue
    billing: KeyValue
    artifacts: ObjectStore
    sandboxes: KeyValue
    triggers: KeyValue
    cron: KeyValue
    concurrency: KeyValue
    versions: KeyValue
    aliases: KeyValue
    tenant_keys: KeyValue
    audit_state: KeyValue
    webhooks_seen: KeyValue
    secrets: KeyValue
    url_keys: KeyValue
    signed_nonces: KeyValue
    tenants: KeyValue
    users: KeyValue
    api_keys: KeyValue
    oauth_clients: KeyValue
    jwt_keys: KeyValue
    limits: KeyValue


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration: converge to ours.
        try:
            await js.update_stream(config)
        except APIError as exc:
            if exc.err_code != CANNOT_CANCEL_DENY_PURGE:
                raise
            # An audit stream made before retention existed denies purges for good: keep it as it is.
            log.warning("nats.stream_kept", stream=config.name, reason=exc.description)


async def _ensure_kv(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except BadRequestError:  # exists with another configuration: use it as it is
        return await js.key_value(config.bucket)


def _stream(name: str, subjects: str, replicas: int, **config: object) -> api.StreamConfig:
    """A file-backed stream (the default) with the invocation-id de-duplication window."""
    defaults: dict[str, object] = {"storage": api.StorageType.FILE, "duplicate_window": DEDUPE_WINDOW_S}
    return api.StreamConfig(name=name, subjects=[subjects], num_replicas=replicas, **(defaults | config))  # type: ignore[arg-type]


def streams(settings: Settings) -> list[api.StreamConfig]:
    """Every stream SoulBox declares (the KV buckets and the object store aside)."""
    r = settings.nats.replicas
    work_queue, limits = api.RetentionPolicy.WORK_QUEUE, api.RetentionPolicy.LIMITS
    return [
        _stream(
            names.INVOCATIONS_STREAM,
            names.INVOCATIONS_SUBJECTS,
            r,
            retention=work_queue,
            discard=api.DiscardPolicy.NEW,
            max_msgs=settings.queue.max_msgs,
            max_bytes=settings.queue.max_bytes,
        ),
        _stream(
            names.DEAD_LETTERS_STREAM,
            names.DEAD_LETTERS_SUBJECTS,
            r,
            retention=limits,
            max_msgs_per_subject=1,
            max_age=14 * 24 * 3600.0,
        ),
        _stream(names.EVENTS_STREAM, names.EVENTS_SUBJECTS, r, retention=limits, max_age=7 * 24 * 3600.0),
        _stream(
            names.AUDIT_STREAM,
            names.AUDIT_SUBJECTS,
            r,
            retention=limits,
            deny_delete=True,
            # Purges are the audit consumer's retention of exported records (events/auditexport.py);
            # a purge removes a prefix only, which verification against the exported segments detects.
            deny_purge=False,
            # The audit writer appends each batch as one atomic batch (events/auditlog.py).
            allow_atomic=True,
        ),
        _stream(names.CALLBACKS_STREAM, names.CALLBACKS_SUBJECTS, r, retention=work_queue, max_age=24 * 3600.0),
        # Work queue: a record leaves the intake (with the tenant's name in clear) once chained.
        _stream(
            names.AUDIT_INTAKE_STREAM, names.AUDIT_INTAKE_SUBJECTS, r, retention=work_queue, max_age=7 * 24 * 3600.0
        ),
        _stream(
            names.LOGS_STREAM,
            names.LOGS_SUBJECTS,
            r,
            retention=limits,
            duplicate_window=None,
            discard=api.DiscardPolicy.OLD,  # output never blocks a run: the oldest goes first
            max_age=settings.logs.max_age_s,
            max_bytes=settings.logs.max_bytes,
        ),
        _stream(
            names.RATELIMIT_STREAM,
            names.RATELIMIT_SUBJECTS,
            r,
            duplicate_window=None,
            allow_msg_counter=True,  # atomic increments: one round trip, whatever the contention
            storage=api.StorageType.MEMORY,  # short-lived windows; losing them resets rate limits, nothing else
            max_msgs_per_subject=1,
            max_age=max(10.0, 4 * settings.limits.window_s),
        ),
    ]


def consumers() -> list[tuple[str, api.ConsumerConfig]]:
    """The durables SoulBox declares up front (SB_EVENTS' is the events process's: events/topology.py)."""
    explicit = api.AckPolicy.EXPLICIT
    return [
        (
            names.CALLBACKS_STREAM,
            api.ConsumerConfig(
                durable_name=names.CALLBACKS_CONSUMER,
                ack_policy=explicit,
                ack_wait=60.0,
                max_ack_pending=10_000,
                max_deliver=-1,  # the deliverer gives up itself, after settings.triggers.callback_attempts
            ),
        ),
        (
            names.AUDIT_INTAKE_STREAM,
            api.ConsumerConfig(
                durable_name=names.AUDIT_CONSUMER,
                ack_policy=explicit,
                ack_wait=30.0,
                max_ack_pending=20_000,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        ),
        (
            names.INVOCATIONS_STREAM,
            api.ConsumerConfig(
                durable_name=names.SCHEDULER_CONSUMER,
                ack_policy=explicit,
                ack_wait=10.0,  # a dead scheduler's invocations come back after this; live ones send progress
                max_ack_pending=-1,
                max_deliver=-1,
            ),
        ),
    ]


def buckets(settings: Settings) -> dict[str, api.KeyValueConfig]:
    """Every KV bucket, by its field in :class:`Buckets`."""
    r = settings.nats.replicas
    return {
        "functions": api.KeyValueConfig(bucket=names.FUNCTIONS_BUCKET, history=5, replicas=r),
        "invocations": api.KeyValueConfig(bucket=names.INVOCATIONS_BUCKET, ttl=settings.invocation_ttl_s, replicas=r),
        "workers": api.KeyValueConfig(
            bucket=names.WORKERS_BUCKET, ttl=settings.worker.heartbeat_ttl_s * 10, replicas=r
        ),
        "billing": api.KeyValueConfig(bucket=names.BILLING_BUCKET, replicas=r),
        "sandboxes": api.KeyValueConfig(bucket=names.SANDBOXES_BUCKET, replicas=r),
        "tenant_keys": api.KeyValueConfig(bucket=names.TENANT_KEYS_BUCKET, replicas=r),
        "audit_state": api.KeyValueConfig(bucket=names.AUDIT_STATE_BUCKET, replicas=r),
        "webhooks_seen": api.KeyValueConfig(
            bucket=names.WEBHOOKS_SEEN_BUCKET, ttl=WEBHOOKS_SEEN_TTL_S, history=1, replicas=r
        ),
        # A nonce is remembered past the longest expiry a URL may have, plus clock-skew margin.
        "signed_nonces": api.KeyValueConfig(
            bucket=names.SIGNED_NONCES_BUCKET, ttl=settings.signed_urls.max_expires_s + 10 * 60.0, history=1, replicas=r
        ),
        **{  # only the current value matters
            field: api.KeyValueConfig(bucket=bucket, history=1, replicas=r)
            for field, bucket in (
                ("triggers", names.TRIGGERS_BUCKET),
                ("cron", names.CRON_BUCKET),
                ("concurrency", names.CONCURRENCY_BUCKET),
                ("versions", names.VERSIONS_BUCKET),
                ("aliases", names.ALIASES_BUCKET),
                ("secrets", names.SECRETS_BUCKET),
                ("url_keys", names.URL_KEYS_BUCKET),
                ("tenants", names.TENANTS_BUCKET),
                ("users", names.USERS_BUCKET),
                ("api_keys", names.API_KEYS_BUCKET),
                ("oauth_clients", names.OAUTH_CLIENTS_BUCKET),
                ("jwt_keys", names.JWT_KEYS_BUCKET),
                ("limits", names.LIMITS_BUCKET),
            )
        },
    }


async def ensure_topology(js: JetStreamContext, settings: Settings) -> Buckets:
    """Create (or converge) every stream, consumer and bucket SoulBox uses."""
    for config in streams(settings):
        await _ensure_stream(js, config)
    for stream, consumer in consumers():
        await _ensure_consumer(js, stream, consumer)
    kv = {field: await _ensure_kv(js, config) for field, config in buckets(settings).items()}
    return Buckets(artifacts=await _ensure_object_store(js, settings.nats.replicas), **kv)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> None:
    try:
        await js.consumer_info(stream, config.durable_name or "")
    except NotFoundError:
        await js.add_consumer(stream, config)


async def _ensure_object_store(js: JetStreamContext, replicas: int) -> ObjectStore:
    try:
        return await js.object_store(names.ARTIFACTS_BUCKET)
    except Exception:  # BucketNotFoundError is not exported uniformly across versions
        return await js.create_object_store(names.ARTIFACTS_BUCKET, replicas=replicas)
