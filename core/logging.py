"""structlog setup: one JSON object per line, with ids bound by callers."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, WrappedLogger

ENV_KEYS = frozenset({"env", "env_vars", "envs", "envVars", "environment"})


def redact_env(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Environment mappings are logged by name only: they may hold opened secrets."""
    for key in ENV_KEYS & event.keys():
        value = event[key]
        if isinstance(value, dict):
            event[key] = sorted(str(k) for k in value)
    return event


def configure_logging(level: str = "info", fmt: str = "json", *, component: str) -> None:
    """Configure structlog once per process. ``component`` goes on every line."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact_env,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
