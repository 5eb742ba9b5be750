"""The triggers, kept current by a watch on the triggers bucket.

The gateway reads webhooks and HTTP routes from it; the trigger service its
NATS subjects and schedules. Listeners hear every change after the catalog
applied it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js.kv import KeyValue

from soulbox.core.codec import decode
from soulbox.core.errors import SchemaError
from soulbox.core.logging import get_logger
from soulbox.core.schemas import TriggerKind, TriggerSpec

from .routes import RoutePattern

log = get_logger(__name__)


class TriggerCatalog:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._triggers: dict[str, TriggerSpec] = {}
        self._routes: dict[str, RoutePattern] = {}
        self._watch: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    async def start(self) -> None:
        watcher = await self._kv.watchall()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watch = asyncio.create_task(self._follow(watcher, ready))
        await ready

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Future[None]) -> None:
        async for entry in watcher:
            if entry is None:
                if not ready.done():
                    ready.set_result(None)
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.forget(entry.key)
            else:
                try:
                    self.apply(entry.key, decode(TriggerSpec, entry.value))
                except SchemaError as exc:
                    log.warning("triggers.bad_spec", key=entry.key, error=exc.message)
                    continue
            if ready.done():
                for listener in self._listeners:
                    listener()

    def apply(self, key: str, spec: TriggerSpec) -> None:
        """Take ``spec`` as the current value of ``key`` (also used to read one's own writes)."""
        self._triggers[key] = spec
        if spec.http is not None:
            self._routes[key] = RoutePattern.compile(spec.http.path)
        else:
            self._routes.pop(key, None)

    def forget(self, key: str) -> None:
        self._triggers.pop(key, None)
        self._routes.pop(key, None)

    def get(self, key: str) -> TriggerSpec | None:
        return self._triggers.get(key)

    def of_kind(self, kind: TriggerKind) -> list[TriggerSpec]:
        return [t for t in self._triggers.values() if t.kind is kind and t.enabled]

    def route(self, tenant: str, method: str, path: str) -> tuple[TriggerSpec, dict[str, str]] | None:
        """The enabled HTTP trigger for ``method path`` (literal segments win), with its parameters."""
        best: tuple[int, TriggerSpec, dict[str, str]] | None = None
        for key, pattern in self._routes.items():
            spec = self._triggers[key]
            if spec.tenant != tenant or not spec.enabled or spec.http is None:
                continue
            if spec.http.method != method and not (method == "HEAD" and spec.http.method == "GET"):
                continue
            params = pattern.match(path)
            if params is not None and (best is None or pattern.literal_segments > best[0]):
                best = (pattern.literal_segments, spec, params)
        return None if best is None else (best[1], best[2])
