"""The JS tier on Bun under the conformance suite: script-mode guests (stdin -> stdout, exit code)."""

from __future__ import annotations

from pathlib import Path

from tests.runtimes.js.guests import BUN, SCRIPTS, Guests

from .base import CASES, TierUnderTest


async def make(tmp: Path) -> TierUnderTest:
    guests = Guests(BUN, {case: SCRIPTS[BUN][case] for case in CASES})
    return TierUnderTest("js-bun", guests.runtime_for(tmp), guests.spec, hello_output=b"hello from js\n")
