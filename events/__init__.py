"""events: the consumers of lifecycle events (billing, audit, metrics) and their read sides.

Each consumer is one process (``python -m soulbox.events <kind>``) running the
generic loop of :mod:`.consumer` over a durable consumer with one recorder.
The read sides (usage report, audit log, verification, exports) are plain
functions the gateway and the command line call.
"""

from __future__ import annotations

from soulbox.core.metrics_server import MetricsServer

from .audit import AuditRecorder, IntakeRecorder, event_record, new_record_id, read_audit, record_api_call
from .auditexport import Manifest, apply_retention, export_segment, load_segments, verify_log, verify_segments
from .auditlog import AuditLog, ChainBroken
from .billing import METERS, BillingRecorder, Meter, usage_entry
from .chain import GENESIS, Problem, Verdict, canonical, link, record_hash, verify
from .cli import main
from .consumer import BatchRecorder, EventConsumer, Recorder
from .metrics import MetricsRecorder
from .s3 import ExportStore
from .service import KINDS, Kind, run
from .tenantkeys import TenantKeys
from .usage import FunctionUsage, Granularity, UsageBucket, UsageReport, UsageTotals, usage, usage_entries
from .usageexport import export_recent, export_usage, parse_period

__all__ = [
    "GENESIS",
    "KINDS",
    "METERS",
    "AuditLog",
    "AuditRecorder",
    "BatchRecorder",
    "BillingRecorder",
    "ChainBroken",
    "EventConsumer",
    "ExportStore",
    "FunctionUsage",
    "Granularity",
    "IntakeRecorder",
    "Kind",
    "Manifest",
    "Meter",
    "MetricsRecorder",
    "MetricsServer",
    "Problem",
    "Recorder",
    "TenantKeys",
    "UsageBucket",
    "UsageReport",
    "UsageTotals",
    "Verdict",
    "apply_retention",
    "canonical",
    "event_record",
    "export_recent",
    "export_segment",
    "export_usage",
    "link",
    "load_segments",
    "main",
    "new_record_id",
    "parse_period",
    "read_audit",
    "record_api_call",
    "record_hash",
    "run",
    "usage",
    "usage_entries",
    "usage_entry",
    "verify",
    "verify_log",
    "verify_segments",
]
