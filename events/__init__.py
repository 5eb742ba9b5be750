"""events: the consumers of lifecycle events (billing, audit, metrics) and their read sides.

One process (``python -m soulbox.events run``) runs the generic loop of
:mod:`.consumer` over one durable and feeds each event to the three recorders
(:mod:`.fanout`); standbys wait for the durable's pin (:mod:`.topology`).
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
from .fanout import Fanout
from .metrics import MetricsRecorder
from .s3 import ExportStore
from .service import run
from .tenantkeys import TenantKeys
from .topology import ensure_events_consumer
from .usage import FunctionUsage, Granularity, UsageBucket, UsageReport, UsageTotals, usage, usage_entries
from .usageexport import export_recent, export_usage, parse_period

__all__ = [
    "GENESIS",
    "METERS",
    "AuditLog",
    "AuditRecorder",
    "BatchRecorder",
    "BillingRecorder",
    "ChainBroken",
    "EventConsumer",
    "ExportStore",
    "Fanout",
    "FunctionUsage",
    "Granularity",
    "IntakeRecorder",
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
    "ensure_events_consumer",
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
