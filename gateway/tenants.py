"""``/v1/tenants/{tenant}/export`` and ``/v1/tenants/{tenant}/data``: compliance export and erasure.

Export gathers everything recorded about a tenant (functions, invocation
records, usage entries, audit records) into one JSON document, returned or
(``?to=s3``) written to the export store. Erasure removes the tenant's
functions, invocation records, usage entries, secrets and URL-signing keys (every revision), appends a
``tenant.erased`` tombstone to the audit log, waits until it is chained, and
then deletes the tenant's pseudonym secret, which unlinks the audit records
from the tenant without touching the hash chain (see
:mod:`soulbox.events.tenantkeys` for the design).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from nats.js.kv import KeyValue
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core import names
from soulbox.core.errors import InvalidRequest, Unavailable
from soulbox.core.ledger import AuditRecord
from soulbox.core.schemas import FunctionSpec, InvocationRecord, checked_name, utcnow
from soulbox.core.secrets_signing import SigningKeyRing
from soulbox.core.secrets_store import SecretEntry
from soulbox.core.store import scan, settle
from soulbox.events import ExportStore, TenantKeys, new_record_id, read_audit, record_api_call, usage_entries
from soulbox.events.auditblocks import after_message, place

from .platform import Platform, platform
from .reports import sequenced

TOMBSTONE_WAIT_S = 10.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


async def _invocations(kv: KeyValue, tenant: str) -> list[tuple[str, InvocationRecord]]:
    return [(key, record) async for key, record in scan(kv, ">", InvocationRecord) if record.tenant == tenant]


async def _audit(p: Platform, keys: TenantKeys, tenant: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        page, after_next = await read_audit(p.js, keys, tenant, after_seq=after, limit=1000)
        records += [sequenced(at, record) for at, record in page]
        if after_next == after:
            return records
        after = after_next


async def tenant_document(p: Platform, tenant: str) -> dict[str, Any]:
    """Everything recorded about ``tenant``, as one JSON-ready document (bytes as base64)."""
    keys = TenantKeys(p.buckets.tenant_keys)
    functions = [spec async for _, spec in scan(p.buckets.functions, f"{tenant}.>", FunctionSpec)]
    return {
        "tenant": tenant,
        "exported_at": utcnow().isoformat(),
        "pseudonym": await keys.lookup(tenant),
        "functions": [_jsonable(spec.model_dump(mode="python")) for spec in functions],
        "invocations": [
            _jsonable(r.model_dump(mode="python")) for _, r in await _invocations(p.buckets.invocations, tenant)
        ],
        "usage": [entry.model_dump(mode="json") for _, entry in await usage_entries(p.buckets.billing, tenant)],
        "audit": await _audit(p, keys, tenant),
    }


async def export_tenant(request: Request) -> Response:
    p = platform(request)
    tenant = checked_name(request.path_params["tenant"], what="tenant")
    to = request.query_params.get("to")
    if to not in (None, "s3"):
        raise InvalidRequest(f"to must be s3, got {to!r}")
    document = await tenant_document(p, tenant)
    if to == "s3":
        store = ExportStore(p.settings.s3)
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        key = await store.put(
            f"tenants/{tenant}/export-{stamp}.json", json.dumps(document).encode(), content_type="application/json"
        )
        return JSONResponse({"bucket": store.bucket, "key": key})
    return JSONResponse(document)


async def _purge(kv: KeyValue, keys: list[str]) -> int:
    for key in keys:
        await kv.purge(key)
    return len(keys)


async def delete_tenant_data(request: Request) -> Response:
    p = platform(request)
    tenant = checked_name(request.path_params["tenant"], what="tenant")
    keys = TenantKeys(p.buckets.tenant_keys)
    pseudonym = await keys.lookup(tenant)
    deleted = {
        "functions": await _purge(
            p.buckets.functions, [k async for k, _ in scan(p.buckets.functions, f"{tenant}.>", FunctionSpec)]
        ),
        "invocations": await _purge(
            p.buckets.invocations, [k for k, _ in await _invocations(p.buckets.invocations, tenant)]
        ),
        "usage_entries": await _purge(
            p.buckets.billing, [k for k, _ in await usage_entries(p.buckets.billing, tenant)]
        ),
        "secrets": await _purge(
            p.buckets.secrets, [k async for k, _ in scan(p.buckets.secrets, f"{tenant}.>", SecretEntry)]
        ),
        "url_keys": await _purge(
            p.buckets.url_keys, [k async for k, _ in scan(p.buckets.url_keys, tenant, SigningKeyRing)]
        ),
    }
    tombstone = AuditRecord(
        id=new_record_id(),
        kind="api",
        tenant=tenant,
        action="tenant.erased",
        resource=f"/v1/tenants/{tenant}",
        result="erased",
        source="gateway",
        detail={key: value for key, value in deleted.items()},
    )
    start = after_message((await p.js.stream_info(names.AUDIT_STREAM)).state.last_seq)
    await settle([await record_api_call(p.js, tombstone)])
    seq = await _wait_chained(p, keys, tenant, tombstone.id, after=start)
    await keys.forget(tenant)
    return JSONResponse({"tenant": tenant, "pseudonym": pseudonym, "deleted": deleted, "tombstone_seq": seq})


async def _wait_chained(p: Platform, keys: TenantKeys, tenant: str, record_id: str, *, after: int) -> int:
    """The sequence of the tombstone once the audit consumer chained it."""
    deadline = time.monotonic() + TOMBSTONE_WAIT_S
    cursor = after
    while time.monotonic() < deadline:
        page, cursor = await read_audit(p.js, keys, tenant, after_seq=cursor, limit=1000)
        for at, record in page:
            if record.id == record_id:
                return place(at)[0]
        await asyncio.sleep(0.1)
    raise Unavailable("the audit consumer did not record the erasure in time; the tenant's key was kept, retry")
