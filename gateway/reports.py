"""``/v1/usage``, ``/v1/audit`` and ``/v1/audit/verify``: what billing and audit recorded."""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core.errors import InvalidRequest
from soulbox.core.ledger import AuditRecord
from soulbox.core.schemas import checked_name
from soulbox.events import ExportStore, Granularity, TenantKeys, read_audit, usage, verify_log
from soulbox.events.auditblocks import place
from soulbox.events.auditexport import anchor_for

from .platform import platform
from .principal import principal

_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _datetime(request: Request, *names: str) -> datetime | None:
    for name in names:
        raw = request.query_params.get(name)
        if raw is None:
            continue
        try:
            return _DATETIME.validate_python(raw)
        except ValidationError:
            raise InvalidRequest(f"{name} must be an ISO 8601 date or date-time, got {raw!r}") from None
    return None


def _int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


def tenant_of(request: Request) -> str:
    """``?tenant=`` when given (an operator's view), else the gateway's tenant."""
    raw = request.query_params.get("tenant") or principal(request).tenant
    return checked_name(raw, what="tenant")


async def get_usage(request: Request) -> Response:
    """Usage of ``tenant`` in ``[from, to)`` (``since``/``until`` also accepted), per hour or day, with cost."""
    p = platform(request)
    raw = request.query_params.get("granularity", "day")
    granularities = get_args(Granularity)
    if raw not in (*granularities, "none"):
        raise InvalidRequest(f"granularity must be one of {', '.join((*granularities, 'none'))}")
    granularity: Granularity | None = None if raw == "none" else raw  # type: ignore[assignment]
    report = await usage(
        p.buckets.billing,
        tenant_of(request),
        prices=p.settings.billing.prices,
        since=_datetime(request, "from", "since"),
        until=_datetime(request, "to", "until"),
        function=request.query_params.get("function") or None,
        granularity=granularity,
    )
    return JSONResponse(report.model_dump(mode="json"))


async def get_audit(request: Request) -> Response:
    p = platform(request)
    records, next_seq = await read_audit(
        p.js,
        TenantKeys(p.buckets.tenant_keys),
        principal(request).tenant,
        after_seq=_int(request, "after", 0, low=0, high=2**63),
        limit=_int(request, "limit", 100, low=1, high=1000),
    )
    return JSONResponse(
        {
            "records": [sequenced(position, record) for position, record in records],
            "next": next_seq,
        }
    )


def sequenced(position_: int, record: AuditRecord) -> dict[str, Any]:
    """A record as the API shows it: its message's stream sequence and its index in that message."""
    seq, index = place(position_)
    return {"seq": seq, "index": index, "position": position_, **record.model_dump(mode="json")}


async def verify_audit(request: Request) -> Response:
    """Verify the whole chain on the stream; ``ok`` false names the first bad record."""
    p = platform(request)
    store = ExportStore(p.settings.s3) if p.settings.s3.bucket else None
    verdict = await verify_log(p.js, anchor=await anchor_for(store, p.js))
    return JSONResponse(verdict.model_dump(mode="json"))
