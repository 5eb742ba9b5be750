"""A process's live copy of a KV bucket: every key's latest value, decoded, kept current.

``start()`` returns once the bucket's current values are in; after that each
put or delete is applied as it arrives, and the listeners run. Values that
do not decode are logged and skipped (an old or foreign writer must not stop
the mirror).

Not nats-py's ``watchall``: its "initial values done" marker can arrive
before the values when the server pushes them all before the watcher reads
its consumer's info, and a mirror started then looked empty. Here the current
values are read by :func:`~soulbox.core.store.scan_raw` (an exact count), and
an ordered consumer follows the bucket's stream from the sequence it had
before that read: a write that lands meanwhile is applied again, in order,
which changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from .codec import decode
from .errors import SchemaError
from .logging import get_logger
from .schemas import Message
from .store import kv_value, scan_raw

log = get_logger(__name__)

M = TypeVar("M", bound=Message)


class KvMirror(Generic[M]):
    """Every key of a bucket with its decoded value (``values``), or, with ``keep=False``, just the callbacks."""

    def __init__(
        self,
        kv: KeyValue,
        model: type[M],
        *,
        on_put: Callable[[str, M], None] | None = None,
        on_delete: Callable[[str], None] | None = None,
        keep: bool = True,
    ) -> None:
        self._kv = kv
        self._model = model
        self._on_put = on_put
        self._on_delete = on_delete
        self._keep = keep
        self.values: dict[str, M] = {}
        self._sub: Subscription | None = None
        self._listeners: list[Callable[[], None]] = []

    async def start(self) -> None:
        js: JetStreamContext = self._kv._js  # the bucket's own context and names (nats-py keeps them private)
        stream: str = self._kv._stream
        prefix = f"$KV.{self._kv._name}."
        last = (await js.stream_info(stream)).state.last_seq
        async for key, value in scan_raw(self._kv, ">"):
            self._apply(key, value)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)

        async def follow(msg: Msg) -> None:
            self._apply(msg.subject[len(prefix) :], kv_value(msg))
            for listener in self._listeners:
                listener()

        self._sub = await js.subscribe(prefix + ">", stream=stream, config=config, ordered_consumer=True, cb=follow)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def on_change(self, listener: Callable[[], None]) -> None:
        """Run ``listener`` after every change that arrives once the initial values are in."""
        self._listeners.append(listener)

    def put(self, key: str, value: M) -> None:
        """Take ``value`` as the current one of ``key`` (also to read one's own writes before the stream does)."""
        if self._keep:
            self.values[key] = value
        if self._on_put is not None:
            self._on_put(key, value)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)
        if self._on_delete is not None:
            self._on_delete(key)

    def _apply(self, key: str, value: bytes | None) -> None:
        if not value:
            self.delete(key)
            return
        try:
            decoded = decode(self._model, value)
        except SchemaError as exc:
            log.warning("kv.bad_value", key=key, model=self._model.__name__, error=exc.message)
            return
        self.put(key, decoded)
