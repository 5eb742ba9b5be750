"""Usage reports exported as CSV and JSON to the export store, per period.

    usage/<label>.json   {"from", "to", "generated_at", "prices", "reports": [UsageReport per tenant]}
    usage/<label>.csv    one row per tenant, time bucket and function

A period is ``YYYY-MM`` (a month), ``YYYY-MM-DD`` (a day) or ``YYYY-MM-DDTHH``
(an hour), in UTC. Exporting a period again overwrites it with the same or
newer figures (usage entries are keyed, so they never double count).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from nats.js.kv import KeyValue

from soulbox.core.errors import InvalidRequest
from soulbox.core.ledger import UsageEntry
from soulbox.core.schemas import utcnow
from soulbox.core.settings import PriceList

from .s3 import ExportStore
from .usage import Granularity, build_report, report_rows, usage_entries

CSV_COLUMNS = (
    "tenant", "bucket_start", "function", "invocations", "billable_ms", "gb_seconds",
    "cpu_seconds", "sandbox_seconds", "egress_bytes", "cost",
)  # fmt: skip

_PERIOD = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2})(?:T(\d{2}))?)?$")


def parse_period(text: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of a month, day or hour given as text."""
    match = _PERIOD.match(text)
    if match is None:
        raise InvalidRequest(f"period must be YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH, got {text!r}")
    year, month, day, hour = match.groups()
    try:
        start = datetime(int(year), int(month), int(day or 1), int(hour or 0), tzinfo=UTC)
    except ValueError as exc:
        raise InvalidRequest(f"invalid period {text!r}: {exc}") from None
    if hour is not None:
        return start, start + timedelta(hours=1)
    if day is not None:
        return start, start + timedelta(days=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def period_label(start: datetime, granularity: Granularity) -> str:
    return start.strftime("%Y-%m-%dT%H" if granularity == "hour" else "%Y-%m-%d")


async def export_usage(
    kv: KeyValue,
    store: ExportStore,
    *,
    start: datetime,
    end: datetime,
    label: str,
    prices: PriceList,
    granularity: Granularity = "hour",
) -> tuple[str, str]:
    """Write the JSON and CSV report of every tenant's usage in ``[start, end)``; their keys."""
    by_tenant: dict[str, list[UsageEntry]] = defaultdict(list)
    for _key, entry in await usage_entries(kv, None, since=start, until=end):
        by_tenant[entry.tenant].append(entry)
    reports = [
        build_report(tenant, entries, prices=prices, since=start, until=end, function=None, granularity=granularity)
        for tenant, entries in sorted(by_tenant.items())
    ]
    document = {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "generated_at": utcnow().isoformat(),
        "prices": prices.model_dump(),
        "reports": [report.model_dump(mode="json") for report in reports],
    }
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for report in reports:
        writer.writerows(report_rows(report))
    json_key = await store.put(f"usage/{label}.json", json.dumps(document).encode(), content_type="application/json")
    csv_key = await store.put(f"usage/{label}.csv", text.getvalue().encode(), content_type="text/csv")
    return json_key, csv_key


async def export_recent(
    kv: KeyValue, store: ExportStore, *, prices: PriceList, granularity: Granularity, now: datetime | None = None
) -> list[str]:
    """Export the current and the previous hour (or day): what the periodic export does."""
    now = now or utcnow()
    step = timedelta(hours=1) if granularity == "hour" else timedelta(days=1)
    current = now.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        current = current.replace(hour=0)
    keys: list[str] = []
    for start in (current - step, current):
        keys += await export_usage(
            kv,
            store,
            start=start,
            end=start + step,
            label=period_label(start, granularity),
            prices=prices,
            granularity=granularity,
        )
    return keys
