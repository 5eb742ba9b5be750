"""``/v1/usage`` and ``/v1/audit``: what billing and audit recorded for the tenant."""

from __future__ import annotations

from datetime import datetime
from typing import get_args

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core.errors import InvalidRequest
from soulbox.events import Granularity, read_audit, usage

from .platform import platform

_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _datetime(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return _DATETIME.validate_python(raw)
    except ValidationError:
        raise InvalidRequest(f"{name} must be an ISO 8601 date or date-time, got {raw!r}") from None


def _int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


async def get_usage(request: Request) -> Response:
    p = platform(request)
    raw = request.query_params.get("granularity", "day")
    granularities = get_args(Granularity)
    if raw not in (*granularities, "none"):
        raise InvalidRequest(f"granularity must be one of {', '.join((*granularities, 'none'))}")
    granularity: Granularity | None = None if raw == "none" else raw  # type: ignore[assignment]
    report = await usage(
        p.buckets.billing,
        p.settings.tenant,
        price_per_gb_s=p.settings.events.billing_price_per_gb_s,
        since=_datetime(request, "since"),
        until=_datetime(request, "until"),
        function=request.query_params.get("function") or None,
        granularity=granularity,
    )
    return JSONResponse(report.model_dump(mode="json"))


async def get_audit(request: Request) -> Response:
    p = platform(request)
    records, next_seq = await read_audit(
        p.js,
        p.settings.tenant,
        after_seq=_int(request, "after", 0, low=0, high=2**63),
        limit=_int(request, "limit", 100, low=1, high=1000),
    )
    return JSONResponse(
        {
            "records": [{"seq": seq, **record.model_dump(mode="json")} for seq, record in records],
            "next": next_seq,
        }
    )
