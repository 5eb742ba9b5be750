"""Requests per second, shared by every gateway replica, at almost no cost per request.

Time is cut into fixed windows of ``window_s``. Each (scope, window) has one
JetStream counter (stream ``SB_RATELIMITS``, ``Nats-Incr``: an atomic add in
one round trip, however many gateways add at once). A gateway does not count
every request there: it claims a *chunk* of the window's allowance (a share
``chunk_fraction`` of the limit) and spends it locally, so most requests cost
a dictionary lookup and one request in ``chunk`` costs one round trip
(~0.25 ms). A claim is granted only the part of its chunk that fits under the
limit, so the replicas together never admit more than the limit per window.
The price is fairness, not safety: allowance a replica claimed but did not
spend is lost to the others, at most ``replicas × chunk`` per window. Known
margin of fixed windows: a burst straddling a window boundary may see up to
twice the limit within one ``window_s``.

If NATS does not answer a claim, the gateway admits (fails open) and logs:
losing the limiter must not take the API down with it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.logging import get_logger

log = get_logger(__name__)

_INCR = "Nats-Incr"


@dataclass(slots=True)
class _Window:
    index: int
    limit: int
    allowance: int = 0
    exhausted: bool = False  # the shared counter reached the limit: refuse locally until the next window
    claiming: asyncio.Future[None] | None = field(default=None)


class RateLimiter:
    """Admits or refuses requests per scope (``t.<tenant>``, ``k.<key>``) against a limit per window."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        window_s: float = 1.0,
        chunk_fraction: float = 0.05,
        claim_timeout_s: float = 1.0,
    ) -> None:
        self._js = js
        self.window_s = window_s
        self._chunk_fraction = chunk_fraction
        self._claim_timeout_s = claim_timeout_s
        self._windows: dict[str, _Window] = {}
        self.claims = 0  # round trips made (for tests and benchmarks)

    def window_limit(self, per_second: float) -> int:
        """Requests admitted per window for a limit of ``per_second`` (at least one)."""
        return max(1, math.floor(per_second * self.window_s))

    async def admit(self, scope: str, per_second: float) -> float | None:
        """None when the request is admitted, else the seconds until the next window (its Retry-After)."""
        limit = self.window_limit(per_second)
        while True:
            now = time.time()
            index = int(now // self.window_s)
            window = self._windows.get(scope)
            if window is None or window.index != index:
                window = self._windows[scope] = _Window(index, limit)
            elif window.limit != limit:  # the limit changed: the shared count decides again
                window.limit = limit
                window.exhausted = False
            if window.allowance > 0:
                window.allowance -= 1
                return None
            if window.exhausted:
                return (index + 1) * self.window_s - now
            if window.claiming is not None:
                # Another request of this replica is claiming already: share its result.
                await asyncio.shield(window.claiming)
                continue
            window.claiming = asyncio.get_running_loop().create_future()
            try:
                await self._claim(scope, window, limit)
            finally:
                window.claiming.set_result(None)
                window.claiming = None

    async def _claim(self, scope: str, window: _Window, limit: int) -> None:
        chunk = min(limit, max(1, math.ceil(limit * self._chunk_fraction)))
        self.claims += 1
        try:
            ack = await self._js.publish(
                names.ratelimit_subject(scope, window.index),
                b"",
                headers={_INCR: str(chunk)},
                timeout=self._claim_timeout_s,
            )
            total = int(ack.val or 0)
        except Exception as exc:  # NATS down or slow: fail open rather than refuse everything
            log.warning("ratelimit.claim_failed", scope=scope, error=repr(exc))
            window.allowance += chunk
            return
        before = total - chunk
        window.allowance += max(0, min(chunk, limit - before))
        if total >= limit:
            window.exhausted = True
