"""A process's live copy of a KV bucket: every key's latest value, decoded, kept current by a watch.

``start()`` returns once the bucket's current values are in; after that each
put or delete is applied as it arrives, and the listeners run. Values that
do not decode are logged and skipped (an old or foreign writer must not stop
the watch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.kv import KeyValue

from .codec import decode
from .errors import SchemaError
from .logging import get_logger
from .schemas import Message

log = get_logger(__name__)

M = TypeVar("M", bound=Message)


class KvMirror(Generic[M]):
    def __init__(
        self,
        kv: KeyValue,
        model: type[M],
        *,
        on_put: Callable[[str, M], None] | None = None,
        on_delete: Callable[[str], None] | None = None,
    ) -> None:
        self._kv = kv
        self._model = model
        self._on_put = on_put
        self._on_delete = on_delete
        self.values: dict[str, M] = {}
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
        """Run ``listener`` after every change that arrives once the initial values are in."""
        self._listeners.append(listener)

    def put(self, key: str, value: M) -> None:
        """Take ``value`` as the current one of ``key`` (also to read one's own writes before the watch does)."""
        self.values[key] = value
        if self._on_put is not None:
            self._on_put(key, value)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)
        if self._on_delete is not None:
            self._on_delete(key)

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Future[None]) -> None:
        async for entry in watcher:
            if entry is None:  # the end of the current values
                if not ready.done():
                    ready.set_result(None)
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.delete(entry.key)
            else:
                try:
                    self.put(entry.key, decode(self._model, entry.value))
                except SchemaError as exc:
                    log.warning("kv.bad_value", key=entry.key, model=self._model.__name__, error=exc.message)
                    continue
            if ready.done():
                for listener in self._listeners:
                    listener()
