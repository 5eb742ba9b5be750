"""``python -m soulbox.gateway``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import uvicorn

from soulbox.core import tracing
from soulbox.core.logging import configure_logging
from soulbox.core.settings import Settings

from .app import create_app


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, component="gateway")
    tracing.setup(settings.tracing, component="gateway")
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.gateway.host,
            port=settings.gateway.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
