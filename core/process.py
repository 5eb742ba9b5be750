"""The entry point shared by SoulBox's asyncio services (scheduler, worker, triggers).

Settings are read once, logging and tracing are set up for the process's
component, the service runs on uvloop, and spans still queued are flushed on
the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from . import tracing
from .logging import configure_logging
from .settings import Settings


def run_service(component: str, run: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """Run ``run(settings)`` as the process ``component`` until it returns."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, component=component)
    tracing.setup(settings.tracing, component=component)
    try:
        uvloop.run(run(settings))
    finally:
        tracing.shutdown()
