"""The `filesystem.Filesystem` Connect service: stat, list, mkdir, move, remove, and directory watching.

envd stays single-threaded (PTY children are forked with a preexec hook, which threads would make
unsafe), so local filesystem calls run inline on the event loop.
"""
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import stat
from collections.abc import AsyncIterator

from .connect import Call, ConnectError, Message, Method, Router, get_field
from .entries import entry_info, os_error, resolve_path
from .state import State

SERVICE = "filesystem.Filesystem"
# Events kept for a reader that is slow (stream) or has not polled yet; the oldest are dropped beyond.
MAX_PENDING_EVENTS = 10_000
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse", "9p"}


def _str(message: Message, name: str) -> str:
    value = get_field(message, name)
    if not isinstance(value, str) or not value:
        raise ConnectError("invalid_argument", f"{name} is required")
    return value


def _fs_type(path: str) -> str:
    best, kind = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                inside = len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/"))
                if inside and len(parts[1]) >= len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        return ""
    return kind.split(".")[0]


class Watch:
    """A watcher and the events it saw: streamed to a WatchDir call, or kept for GetWatcherEvents."""

    def __init__(self, path: str, recursive: bool, include_entry: bool) -> None:
        self.path = path
        self.include_entry = include_entry
        self.events: collections.deque[Message] = collections.deque(maxlen=MAX_PENDING_EVENTS)
        self.ready = asyncio.Event()
        from .watch import DirWatcher  # on first use: ctypes and libc's inotify cost every idle sandbox memory

        self.watcher = DirWatcher(path, recursive, self._sink)

    def _sink(self, kind: str, name: str) -> None:
        event: Message = {"name": name, "type": kind}
        if self.include_entry and kind != "EVENT_TYPE_REMOVE" and kind != "EVENT_TYPE_RENAME":
            with contextlib.suppress(OSError):
                event["entry"] = entry_info(os.path.join(self.path, name))
        self.events.append(event)
        self.ready.set()

    def drain(self) -> list[Message]:
        """Take every event seen so far."""
        events = list(self.events)
        self.events.clear()
        self.ready.clear()
        return events

    def close(self) -> None:
        """Stop watching."""
        self.watcher.close()


class FilesystemService:
    """Filesystem calls as the e2b SDK makes them."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.watchers: dict[str, Watch] = {}

    def register(self, router: Router) -> None:
        """Add the service's methods to `router`."""
        for name, method in {
            "Stat": Method("unary", self.stat),
            "MakeDir": Method("unary", self.make_dir),
            "Move": Method("unary", self.move),
            "ListDir": Method("unary", self.list_dir),
            "Remove": Method("unary", self.remove),
            "WatchDir": Method("server", self.watch_dir, {"keepalive": {}}),
            "CreateWatcher": Method("unary", self.create_watcher),
            "GetWatcherEvents": Method("unary", self.get_watcher_events),
            "RemoveWatcher": Method("unary", self.remove_watcher),
        }.items():
            router.add(SERVICE, name, method)

    def _path(self, message: Message, call: Call, name: str = "path") -> str:
        return resolve_path(_str(message, name), self.state.user_for(call.headers).home)

    async def stat(self, message: Message, call: Call) -> Message:
        """EntryInfo of a path."""
        path = self._path(message, call)
        try:
            return {"entry": entry_info(path)}
        except OSError as e:
            raise os_error(e, path) from None

    async def make_dir(self, message: Message, call: Call) -> Message:
        """Create a directory and its parents; already_exists if it is there."""
        path = self._path(message, call)
        if os.path.isdir(path):
            raise ConnectError("already_exists", f"directory {path} already exists")
        try:
            os.makedirs(path)
            self._chown(path, call)
            return {"entry": entry_info(path)}
        except OSError as e:
            raise os_error(e, path) from None

    def _chown(self, path: str, call: Call) -> None:
        user = self.state.user_for(call.headers)
        if os.geteuid() == 0 and user.uid != 0:
            os.chown(path, user.uid, user.gid)

    async def move(self, message: Message, call: Call) -> Message:
        """Rename a file or directory, creating the destination's parents."""
        source = self._path(message, call, "source")
        destination = self._path(message, call, "destination")
        try:
            os.lstat(source)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.rename(source, destination)
            return {"entry": entry_info(destination)}
        except OSError as e:
            raise os_error(e, source) from None

    async def list_dir(self, message: Message, call: Call) -> Message:
        """Entries under a directory, `depth` levels deep (1: direct children)."""
        path = self._path(message, call)
        depth = get_field(message, "depth")
        levels = int(depth) if isinstance(depth, (int, str)) and str(depth).isdigit() and int(depth) > 0 else 1
        try:
            if not stat.S_ISDIR(os.stat(path).st_mode):
                raise ConnectError("invalid_argument", f"{path} is not a directory")
        except OSError as e:
            raise os_error(e, path) from None
        entries: list[Message] = []
        pending = [(path, 1)]
        while pending:
            directory, level = pending.pop(0)
            try:
                names = sorted(os.listdir(directory))
            except OSError as e:
                if directory == path:
                    raise os_error(e, path) from None
                continue
            for name in names:
                child = os.path.join(directory, name)
                try:
                    entries.append(entry_info(child))
                except OSError:
                    continue
                if level < levels and os.path.isdir(child) and not os.path.islink(child):
                    pending.append((child, level + 1))
        return {"entries": entries}

    async def remove(self, message: Message, call: Call) -> Message:
        """Delete a file, link or directory tree."""
        path = self._path(message, call)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as e:
            raise os_error(e, path) from None
        return {}

    def _watch(self, message: Message, call: Call) -> Watch:
        path = self._path(message, call)
        try:
            if not stat.S_ISDIR(os.stat(path).st_mode):
                raise ConnectError("invalid_argument", f"{path} is not a directory")
        except OSError as e:
            raise os_error(e, path) from None
        if not get_field(message, "allow_network_mounts") and _fs_type(path) in NETWORK_FILESYSTEMS:
            raise ConnectError("failed_precondition", f"{path} is on a network filesystem")
        try:
            return Watch(path, bool(get_field(message, "recursive")), bool(get_field(message, "include_entry")))
        except OSError as e:
            raise os_error(e, path) from None

    async def watch_dir(self, message: Message, call: Call) -> AsyncIterator[Message]:
        """Stream filesystem events under a directory."""
        watch = self._watch(message, call)
        try:
            yield {"start": {}}
            while True:
                await watch.ready.wait()
                for event in watch.drain():
                    yield {"filesystem": event}
        finally:
            watch.close()

    async def create_watcher(self, message: Message, call: Call) -> Message:
        """Start a watcher whose events are polled with GetWatcherEvents."""
        watch = self._watch(message, call)
        import uuid  # on first use (idle memory)

        watcher_id = str(uuid.uuid4())
        self.watchers[watcher_id] = watch
        return {"watcherId": watcher_id}

    def _watcher(self, message: Message) -> Watch:
        watcher_id = _str(message, "watcher_id")
        watch = self.watchers.get(watcher_id)
        if watch is None:
            raise ConnectError("not_found", f"watcher {watcher_id} not found")
        return watch

    async def get_watcher_events(self, message: Message, call: Call) -> Message:
        """Events since the last poll."""
        return {"events": self._watcher(message).drain()}

    async def remove_watcher(self, message: Message, call: Call) -> Message:
        """Stop a polled watcher."""
        watch = self._watcher(message)
        watch.close()
        self.watchers.pop(_str(message, "watcher_id"), None)
        return {}

    def close(self) -> None:
        """Stop every polled watcher."""
        for watch in self.watchers.values():
            watch.close()
        self.watchers.clear()
