"""Idle warm processes, keyed by function: never shared across keys.

A :class:`PoolKey` names everything a process is bound to: the runtime, the
tenant and function, the artifact, the configuration (env bindings and
permissions are fixed at spawn) and the memory limit (a V8 flag). So one
function's code never runs in a process that served another's.

Fetch-mode processes come back after each invocation and serve the next;
script-mode processes serve one invocation and exit, so their pool holds the
*spare*: a process already booted and connected, waiting for ``run``.
The pool bounds idle processes over all keys (least recently used go first)
and closes any idle longer than ``idle_ttl_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from soulbox.core.logging import get_logger

from .config import Mode
from .process import JsProcess

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PoolKey:
    runtime: str
    tenant: str
    function: str
    artifact: str
    config: str
    memory_mb: int
    mode: Mode


class ProcessPool:
    def __init__(self, *, max_idle: int, idle_ttl_s: float) -> None:
        self._max_idle = max_idle
        self._ttl = idle_ttl_s
        self._idle: OrderedDict[JsProcess, tuple[PoolKey, float]] = OrderedDict()  # oldest first
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.evicted = 0

    def take(self, key: PoolKey) -> JsProcess | None:
        """The most recently idled live process for ``key``, if any."""
        for proc in reversed(self._idle):
            held_key, _ = self._idle[proc]
            if held_key == key:
                del self._idle[proc]
                if proc.alive:
                    return proc
                self.discard(proc)
        return None

    def count(self, key: PoolKey) -> int:
        return sum(1 for held_key, _ in self._idle.values() if held_key == key)

    def put(self, key: PoolKey, proc: JsProcess) -> None:
        if self._closed or not proc.alive:
            self.discard(proc)
            return
        self._idle[proc] = (key, time.monotonic())
        while len(self._idle) > self._max_idle:
            oldest, _ = self._idle.popitem(last=False)
            self.evicted += 1
            self.discard(oldest)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())

    def discard(self, proc: JsProcess) -> None:
        """Close ``proc`` in the background."""
        self._idle.pop(proc, None)
        task = asyncio.create_task(proc.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._ttl / 4))
            cutoff = time.monotonic() - self._ttl
            for proc, (_, since) in list(self._idle.items()):
                if since < cutoff or not proc.alive:
                    self.discard(proc)

    async def close(self) -> None:
        """Close every idle process; safe to call more than once."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for proc in list(self._idle):
            self.discard(proc)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
