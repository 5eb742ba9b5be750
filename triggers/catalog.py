"""The triggers, kept current by a watch on the triggers bucket.

The gateway reads webhooks and HTTP routes from it; the trigger service its
NATS subjects and schedules. Listeners hear every change after the catalog
applied it.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js.kv import KeyValue

from soulbox.core.kvmirror import KvMirror
from soulbox.core.triggerspecs import TriggerKind, TriggerSpec

from .routes import RoutePattern


class TriggerCatalog:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._routes: dict[str, RoutePattern] = {}
        self._mirror = KvMirror(kv, TriggerSpec, on_put=self._index, on_delete=self._unindex)
        self._triggers = self._mirror.values

    async def start(self) -> None:
        await self._mirror.start()

    async def stop(self) -> None:
        await self._mirror.stop()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._mirror.on_change(listener)

    def apply(self, key: str, spec: TriggerSpec) -> None:
        """Take ``spec`` as the current value of ``key`` (also used to read one's own writes)."""
        self._mirror.put(key, spec)

    def forget(self, key: str) -> None:
        self._mirror.delete(key)

    def _index(self, key: str, spec: TriggerSpec) -> None:
        if spec.http is not None:
            self._routes[key] = RoutePattern.compile(spec.http.path)
        else:
            self._routes.pop(key, None)

    def _unindex(self, key: str) -> None:
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
