"""Directory watching with inotify through ctypes (no third-party module), recursive on request."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable

from .entries import UPLOAD_SUFFIX

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
HEADER = struct.Struct("iIII")

# As fsnotify (which E2B's envd uses) names them.
EVENT_TYPES = (
    (IN_CREATE | IN_MOVED_TO, "EVENT_TYPE_CREATE"),
    (IN_MODIFY, "EVENT_TYPE_WRITE"),
    (IN_DELETE | IN_DELETE_SELF, "EVENT_TYPE_REMOVE"),
    (IN_MOVED_FROM, "EVENT_TYPE_RENAME"),
    (IN_ATTRIB, "EVENT_TYPE_CHMOD"),
)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def parse_events(buffer: bytes) -> list[tuple[int, int, bytes]]:
    """Split a read of the inotify fd into (wd, mask, name) triples."""
    out = []
    offset = 0
    while offset + HEADER.size <= len(buffer):
        wd, mask, _cookie, length = HEADER.unpack_from(buffer, offset)
        offset += HEADER.size
        name = buffer[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        out.append((wd, mask, name))
    return out


class DirWatcher:
    """Watches one directory (and, if recursive, every directory below it); calls `sink(type, relpath)`."""

    def __init__(self, root: str, recursive: bool, sink: Callable[[str, str], None]) -> None:
        self.root = root
        self.recursive = recursive
        self.sink = sink
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.dirs: dict[int, str] = {}
        self._add(root)
        if recursive:
            self._add_tree(root)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _add(self, path: str) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if path == self.root:
                os.close(self.fd)
                raise OSError(err, os.strerror(err), path)
            return
        self.dirs[wd] = path

    def _add_tree(self, top: str) -> None:
        for dirpath, dirnames, _ in os.walk(top):
            for name in dirnames:
                self._add(os.path.join(dirpath, name))

    def _readable(self) -> None:
        try:
            buffer = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        for wd, mask, name in parse_events(buffer):
            if mask & (IN_IGNORED | IN_Q_OVERFLOW):
                if mask & IN_IGNORED:
                    self.dirs.pop(wd, None)
                continue
            directory = self.dirs.get(wd)
            if directory is None or name.endswith(UPLOAD_SUFFIX.encode()):
                continue
            path = os.path.join(directory, os.fsdecode(name)) if name else directory
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self._add(path)
                self._add_tree(path)
            if mask & IN_DELETE_SELF and directory != self.root:
                continue  # its parent already reported the removal
            relative = os.path.relpath(path, self.root)
            for bits, kind in EVENT_TYPES:
                if mask & bits:
                    self.sink(kind, "" if relative == "." else relative)

    def close(self) -> None:
        """Stop watching."""
        if self.fd < 0:
            return
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
