"""events: the consumers of lifecycle events (billing, audit, metrics).

Each consumer is one process (``python -m soulbox.events <kind>``) running the
generic loop of :mod:`.consumer` over a durable consumer of ``SB_EVENTS``
with one recorder. The read sides (usage report, audit log) are plain
functions the gateway calls.
"""

from __future__ import annotations

from soulbox.core.names import audit_api_subject, audit_event_subject, audit_tenant_filter

from .audit import AuditRecorder, event_record, new_record_id, read_audit, record_api_call
from .billing import (
    BillingRecorder,
    FunctionUsage,
    Granularity,
    UsageBucket,
    UsageReport,
    UsageTotals,
    usage,
    usage_entry,
)
from .consumer import EventConsumer, Recorder
from .metrics import MetricsRecorder
from .metrics_server import MetricsServer
from .service import KINDS, Kind, build_recorder, main, run

__all__ = [
    "KINDS",
    "AuditRecorder",
    "BillingRecorder",
    "EventConsumer",
    "FunctionUsage",
    "Granularity",
    "Kind",
    "MetricsRecorder",
    "MetricsServer",
    "Recorder",
    "UsageBucket",
    "UsageReport",
    "UsageTotals",
    "audit_api_subject",
    "audit_event_subject",
    "audit_tenant_filter",
    "build_recorder",
    "event_record",
    "main",
    "new_record_id",
    "read_audit",
    "record_api_call",
    "run",
    "usage",
    "usage_entry",
]
