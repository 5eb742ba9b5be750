"""The gateway's side of the sandbox control plane: records from KV, requests over NATS.

Creation goes to the schedulers (placement), every other change to the worker
that hosts the sandbox; reads come from the sandboxes bucket. A record whose
worker no longer heartbeats is stale (the worker died with its sandboxes): it
is treated as gone and removed.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Mapping

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from soulbox.core import names, tracing
from soulbox.core.codec import decode, encode
from soulbox.core.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    Overloaded,
    SchemaError,
    SoulboxError,
    Unavailable,
)
from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import (
    ControlOp,
    SandboxControl,
    SandboxCreate,
    SandboxLogLine,
    SandboxMetric,
    SandboxNetwork,
    SandboxRecord,
    SandboxReply,
    SandboxState,
    checked_sandbox_id,
)
from soulbox.core.sandboxlog import has_sandbox_log, read_sandbox_log
from soulbox.core.schemas import WorkerHeartbeat, utcnow
from soulbox.core.settings import Settings
from soulbox.runtimes.linux.netpolicy import EgressPolicy

log = get_logger(__name__)

CONTROL_TIMEOUT_S = 10.0
_ERRORS: dict[str, type[SoulboxError]] = {
    "not_found": NotFound,
    "sandbox_not_found": NotFound,
    "template_not_found": NotFound,
    "conflict": Conflict,
    "sandbox_paused": Conflict,
    "invalid_request": InvalidRequest,
}


def remote_error(code: str, message: str) -> SoulboxError:
    """The error a worker or scheduler answered with, as the same kind (and code) here."""
    if code == Overloaded.code:
        return Overloaded(message)
    return _ERRORS.get(code, SoulboxError)(message, code=code)


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id!r} does not exist")
        self.sandbox_id = sandbox_id


def new_sandbox_id() -> str:
    return secrets.token_hex(10)


class SandboxControlPlane:
    def __init__(self, settings: Settings, nc: NATS, sandboxes: KeyValue, workers: KeyValue) -> None:
        self.settings = settings
        self._nc = nc
        self._sandboxes = sandboxes
        self._workers = workers

    async def create(
        self,
        tenant: str,
        template: str,
        *,
        timeout_s: int | None,
        metadata: Mapping[str, str],
        env_vars: Mapping[str, str],
        auto_pause: bool = False,
        secrets: Mapping[str, str] | None = None,
        network: SandboxNetwork | None = None,
    ) -> SandboxRecord:
        if network is not None:  # a bad entry is the caller's error, before any scheduler sees it
            EgressPolicy.of_request(internet=network.internet, allow_out=network.allow_out, deny_out=network.deny_out)
        request = SandboxCreate(
            sandbox_id=new_sandbox_id(),
            tenant=tenant,
            template=template,
            timeout_s=self._timeout(timeout_s),
            auto_pause=auto_pause,
            metadata=dict(metadata),
            env_vars=dict(env_vars),
            secrets=dict(secrets or {}),
            network=network,
        )
        wait = self.settings.sandboxes.ready_timeout_s * 2 + 10
        reply = await self._request(names.SANDBOX_CREATE_SUBJECT, encode(request), wait, "no scheduler answered")
        assert reply.record is not None
        return reply.record

    async def get(self, tenant: str, sandbox_id: str) -> SandboxRecord:
        record = await self.locate(sandbox_id)
        if record.tenant != tenant:
            raise SandboxNotFound(sandbox_id)  # another tenant's: invisible, not forbidden
        return record

    async def locate(self, sandbox_id: str) -> SandboxRecord:
        """The live record of ``sandbox_id``, whoever owns it (the data plane authenticates by token)."""
        record = await self._stored(sandbox_id)
        if not await self._worker_alive(record.worker_id):
            await self._forget(record)
            raise SandboxNotFound(sandbox_id)
        return record

    async def list_records(self, tenant: str, *, state: SandboxState | None = None) -> list[SandboxRecord]:
        try:
            keys = await self._sandboxes.keys()
        except NoKeysError:
            return []
        live: dict[str, bool] = {}
        out = []
        for key in keys:
            try:
                entry = await self._sandboxes.get(key)
            except KeyNotFoundError:
                continue
            if entry.value is None:
                continue
            try:
                record = decode(SandboxRecord, entry.value)
            except SchemaError:
                continue
            if record.tenant != tenant or (state is not None and record.state != state):
                continue
            if record.worker_id not in live:
                live[record.worker_id] = await self._worker_alive(record.worker_id)
            if not live[record.worker_id]:
                await self._forget(record)
                continue
            out.append(record)
        out.sort(key=lambda r: (r.started_at, r.sandbox_id))
        return out

    async def _stored(self, sandbox_id: str) -> SandboxRecord:
        """The record in the bucket, its worker's liveness unchecked."""
        checked_sandbox_id(sandbox_id)
        try:
            entry = await self._sandboxes.get(sandbox_id)
        except KeyNotFoundError:
            raise SandboxNotFound(sandbox_id) from None
        if entry.value is None:
            raise SandboxNotFound(sandbox_id)
        return decode(SandboxRecord, entry.value)

    async def control(
        self, tenant: str, sandbox_id: str, op: ControlOp, *, timeout_s: int | None = None
    ) -> SandboxReply:
        """Send ``op`` to the sandbox's worker; its liveness is read only if that worker does not answer."""
        record = await self._stored(sandbox_id)
        if record.tenant != tenant:
            raise SandboxNotFound(sandbox_id)  # another tenant's: invisible, not forbidden
        request = SandboxControl(
            sandbox_id=sandbox_id, op=op, timeout_s=self._timeout(timeout_s) if timeout_s is not None else None
        )
        subject = names.worker_sandbox_subject(record.worker_id, "control")
        try:
            return await self._request(subject, encode(request), CONTROL_TIMEOUT_S, "the sandbox's worker is gone")
        except Unavailable:
            if not await self._worker_alive(record.worker_id):
                await self._forget(record)
                raise SandboxNotFound(sandbox_id) from None
            raise

    async def metrics(self, tenant: str, sandbox_id: str) -> list[SandboxMetric]:
        return (await self.control(tenant, sandbox_id, "metrics")).metrics

    async def logs(self, tenant: str, sandbox_id: str) -> list[SandboxLogLine]:
        """The sandbox's log as stored in SB_LOGS (also after it ended); from its worker if nothing is stored."""
        checked_sandbox_id(sandbox_id)
        stored = [line async for line in read_sandbox_log(self._nc.jetstream(), tenant, sandbox_id, follow=False)]
        if stored:
            return stored
        return (await self.control(tenant, sandbox_id, "logs")).logs

    async def follow_logs(self, tenant: str, sandbox_id: str) -> AsyncGenerator[SandboxLogLine, None]:
        """The sandbox's log lines, stored and to come, until it ends; ``SandboxNotFound`` if there is none."""
        checked_sandbox_id(sandbox_id)
        js = self._nc.jetstream()
        if not await has_sandbox_log(js, tenant, sandbox_id):
            await self.get(tenant, sandbox_id)  # running but nothing stored yet, or not this tenant's: 404
        return read_sandbox_log(js, tenant, sandbox_id, follow=True)

    def _timeout(self, timeout_s: int | None) -> int:
        limits = self.settings.sandboxes
        if timeout_s is None:
            return limits.default_timeout_s
        if not 0 < timeout_s <= limits.max_timeout_s:
            raise InvalidRequest(f"timeout must be between 1 and {limits.max_timeout_s} seconds, got {timeout_s}")
        return timeout_s

    async def _request(self, subject: str, data: bytes, timeout: float, unavailable: str) -> SandboxReply:
        try:
            msg = await self._nc.request(subject, data, timeout=timeout, headers=tracing.inject())
        except (NoRespondersError, NatsTimeoutError):
            raise Unavailable(unavailable) from None
        reply = decode(SandboxReply, msg.data)
        if reply.error_code is not None:
            raise remote_error(reply.error_code, reply.error_message or reply.error_code)
        return reply

    async def _worker_alive(self, worker_id: str) -> bool:
        try:
            entry = await self._workers.get(worker_id)
        except KeyNotFoundError:
            return False
        if entry.value is None:
            return False
        try:
            beat = decode(WorkerHeartbeat, entry.value)
        except SchemaError:
            return False
        silent = (utcnow() - beat.at).total_seconds()
        return not beat.draining and silent < self.settings.worker.heartbeat_ttl_s

    async def _forget(self, record: SandboxRecord) -> None:
        log.info("sandbox.stale_record_removed", sandbox=record.sandbox_id, worker=record.worker_id)
        try:
            await self._sandboxes.delete(record.sandbox_id)
        except Exception as exc:  # another gateway removed it first, or NATS is away: harmless either way
            log.debug("sandbox.stale_record_not_removed", error=repr(exc))
