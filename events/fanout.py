"""Billing, audit and metrics recorders fed from one read of each event.

    batch ──> billing.record ─┐ (concurrently: their round trips overlap)
          └─> audit.record  ──┤
                              └─> metrics.record (in memory; only once both are stored)

A failure of billing or audit fails the batch, which is recorded again whole:
billing rewrites the same keys, the audit log drops the origins it already
chained, and metrics (which counts only after both succeeded) skips the ids it
remembers, so every recorder still sees each event's effect once.
"""

from __future__ import annotations

import asyncio

from soulbox.core.schemas import LifecycleEvent

from .consumer import Recorder


class Fanout:
    """A recorder that runs ``stored`` recorders concurrently, then ``after`` (in order) once they all succeeded."""

    def __init__(self, stored: list[Recorder], after: list[Recorder]) -> None:
        self._stored = stored
        self._after = after

    async def record(self, events: list[LifecycleEvent]) -> None:
        results = await asyncio.gather(*(r.record(events) for r in self._stored), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for recorder in self._after:
            await recorder.record(events)
