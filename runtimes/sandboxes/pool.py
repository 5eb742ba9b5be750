"""Starting sandboxes and keeping them warm: everything a hand-out does not need the request for.

A :class:`ReadyBox` is a started box whose envd client exists and whose envd
already demands a fresh access token (set by one ``/init`` right after the box
came up), so handing one out costs no process start, no client set-up and, for
a request without env vars, no call into the sandbox at all. The
:class:`WarmPool` keeps ``pool_size`` of them per template, topped up off the
caller's path once a hand-out has been answered.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from soulbox.core.errors import SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.tiersettings import SandboxSettings

from ..instruments import WorkerInstruments
from ..linux.box import Box, BoxLimits
from ..linux.netpolicy import EgressPolicy
from ..linux.sandbox import Launcher
from .envd import EnvdClient
from .templates import HOME, Template, Templates

log = get_logger(__name__)

MIB = 1024 * 1024


@dataclass(eq=False)
class ReadyBox:
    """A running box, its envd client and the access token its envd already requires."""

    box: Box
    envd: EnvdClient
    token: str
    env_sent: bool  # the request's env vars are in envd already (a box started for that request)

    async def close(self) -> None:
        await self.envd.aclose()
        await self.box.close()


class BoxStarter:
    """Starts boxes of a template with the worker's limits and locks their envd with a new token."""

    def __init__(
        self, settings: SandboxSettings, launcher: Launcher, instruments: WorkerInstruments | None = None
    ) -> None:
        self._settings = settings
        self._launcher = launcher
        self._instruments = instruments
        self.starting = 0  # boxes being started now (they count against the capacity)

    async def start(
        self, template: Template, *, egress: EgressPolicy | None = None, env: dict[str, str] | None = None
    ) -> ReadyBox:
        """A new box of ``template``; with ``env``, envd has those env vars too (one ``/init`` for both)."""
        self.starting += 1
        started = time.monotonic()
        try:
            box = await self._launcher.start(
                secrets.token_hex(8),
                template.command,
                limits=BoxLimits(
                    memory_bytes=self._settings.memory_mb * MIB,
                    cpu_quota=float(self._settings.cpu_count),
                    pids_max=self._settings.pids_max,
                    disk_bytes=self._settings.disk_mb * MIB,
                ),
                env=template.env,
                ro_binds=template.ro_binds,
                home=HOME,
                ready=template.ready,
                ready_timeout=self._settings.ready_timeout_s,
                egress=egress,
            )
            envd = EnvdClient(box.socket)
            token = secrets.token_urlsafe(24)
            try:
                await envd.init(env or {}, token)
            except BaseException:
                await envd.aclose()
                await box.close()
                raise
        finally:
            self.starting -= 1
        if self._instruments is not None:
            self._instruments.started_box(template.name, time.monotonic() - started)
        return ReadyBox(box, envd, token, env_sent=env is not None)


class WarmPool:
    """Ready boxes per template, up to ``pool_size`` each, within the room the host has left."""

    def __init__(
        self, settings: SandboxSettings, starter: BoxStarter, templates: Templates, room: Callable[[], bool]
    ) -> None:
        self._size = settings.pool_size
        self._starter = starter
        self._templates = templates
        self._room = room
        self._boxes: dict[str, list[ReadyBox]] = {}
        self._filling: dict[str, asyncio.Lock] = {}  # one fill per template at a time: none overshoots
        self._closed = False

    def __len__(self) -> int:
        return sum(len(p) for p in self._boxes.values())

    def boxes(self) -> list[Box]:
        """The pooled boxes, every template's."""
        return [ready.box for pool in self._boxes.values() for ready in pool]

    async def take(self, template: str) -> ReadyBox | None:
        """A live pooled box of ``template``, or None; one whose box died in the pool is closed."""
        pool = self._boxes.get(template, [])
        while pool:
            ready = pool.pop()
            if ready.box.alive:
                return ready
            log.warning("sandbox.pooled_box_died", template=template, box=ready.box.id)
            await ready.close()
        return None

    async def fill(self, name: str) -> None:
        """Top the template's pool up to ``pool_size`` while the host has room."""
        if not self._size or self._closed:
            return
        template = await self._templates.get(name)
        pool = self._boxes.setdefault(name, [])
        async with self._filling.setdefault(name, asyncio.Lock()):
            while not self._closed and len(pool) < self._size and self._room():
                try:
                    ready = await self._starter.start(template)
                except SoulboxError as exc:
                    log.warning("sandbox.pool_start_failed", template=name, error=exc.message)
                    return
                if self._closed:
                    await ready.close()
                    return
                pool.append(ready)

    async def close(self) -> None:
        self._closed = True
        boxes = [ready for pool in self._boxes.values() for ready in pool]
        self._boxes.clear()
        for ready in boxes:
            await ready.close()
