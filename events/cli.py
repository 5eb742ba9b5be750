"""``python -m soulbox.events ...``: the consumer processes and the operator commands.

    python -m soulbox.events run                         consume events (billing, audit, metrics) until SIGTERM/SIGINT
    python -m soulbox.events export-usage --period P     usage of P (YYYY-MM[-DD[THH]]) to S3 as CSV + JSON
    python -m soulbox.events export-audit [--force]      export sealed audit segments now (--force: any records)
    python -m soulbox.events verify-audit [--exported]   verify the chain on the stream (and the exported segments)

Exit status: 0 done (verify: the chain is intact), 1 failed or broken, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import uvloop

from soulbox.core import tracing
from soulbox.core.bus import connect, ensure_topology
from soulbox.core.errors import SoulboxError
from soulbox.core.logging import configure_logging, get_logger
from soulbox.core.process import tune_gc
from soulbox.core.settings import Settings

from .auditexport import anchor_for, export_segment, load_segments, verify_log, verify_segments
from .s3 import ExportStore
from .service import run
from .usageexport import export_usage, parse_period

log = get_logger(__name__)


async def _run_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run(settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _export_usage(settings: Settings, period: str) -> int:
    start, end = parse_period(period)
    nc = await connect(settings, name="soulbox-export-usage")
    try:
        buckets = await ensure_topology(nc.jetstream(), settings)
        keys = await export_usage(
            buckets.billing,
            ExportStore(settings.s3),
            start=start,
            end=end,
            label=period,
            prices=settings.billing.prices,
            granularity="hour" if "T" in period else "day",
        )
    finally:
        await nc.close()
    print(json.dumps({"bucket": settings.s3.bucket, "keys": list(keys)}))
    return 0


async def _export_audit(settings: Settings, force: bool) -> int:
    nc = await connect(settings, name="soulbox-export-audit")
    try:
        js = nc.jetstream()
        buckets = await ensure_topology(js, settings)
        store = ExportStore(settings.s3)
        exported = []
        while manifest := await export_segment(
            js,
            buckets.audit_state,
            store,
            max_records=settings.audit.segment_records,
            max_age_s=settings.audit.segment_seconds,
            force=force,
        ):
            exported.append(manifest.model_dump())
    finally:
        await nc.close()
    print(json.dumps({"segments": exported}))
    return 0


async def _verify_audit(settings: Settings, exported: bool) -> int:
    nc = await connect(settings, name="soulbox-verify-audit")
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        store = ExportStore(settings.s3) if settings.s3.bucket else None
        result: dict[str, object] = {}
        ok = True
        if exported:
            if store is None:
                raise SoulboxError("--exported needs SOULBOX_S3__BUCKET", code="invalid_request")
            segments = verify_segments(await load_segments(store))
            result["exported"] = segments.model_dump()
            ok = segments.ok
        stream = await verify_log(js, anchor=await anchor_for(store, js))
        result["stream"] = stream.model_dump()
        ok = ok and stream.ok
    finally:
        await nc.close()
    print(json.dumps({"ok": ok, **result}, indent=2))
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m soulbox.events")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the events consumer: billing, audit and metrics")
    usage = sub.add_parser("export-usage", help="export a period's usage to S3 as CSV and JSON")
    usage.add_argument("--period", required=True, help="YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH (UTC)")
    audit = sub.add_parser("export-audit", help="export sealed audit segments to S3")
    audit.add_argument("--force", action="store_true", help="also export a segment that is not sealed yet")
    verify = sub.add_parser("verify-audit", help="verify the audit hash chain")
    verify.add_argument("--exported", action="store_true", help="also verify the segments exported to S3")
    return parser


def main(argv: list[str]) -> int:
    """The exit status of one command (see the module docstring)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    settings = Settings()
    command: str = args.command
    configure_logging(
        settings.log_level, settings.log_format, component="events" if command == "run" else f"events.{command}"
    )
    try:
        if command == "run":
            tracing.setup(settings.tracing, component="events")
            tune_gc()
            try:
                uvloop.run(_run_until_signalled(settings))
            finally:
                tracing.shutdown()
            log.info("events.exited")
            return 0
        if command == "export-usage":
            return asyncio.run(_export_usage(settings, args.period))
        if command == "export-audit":
            return asyncio.run(_export_audit(settings, args.force))
        return asyncio.run(_verify_audit(settings, args.exported))
    except SoulboxError as exc:
        log.error("events.failed", error=exc.message, code=exc.code)
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
