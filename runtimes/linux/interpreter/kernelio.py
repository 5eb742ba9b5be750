"""The Python-side kernels' output: the message channel and `sys.stdout`/`sys.stderr`.

Stream text is batched the way ipykernel does it, so that a loop printing a million lines
sends a few hundred messages, not a million: a write that ends a line is sent at once
when nothing was sent for `INTERVAL` seconds (an interactive print shows up immediately),
otherwise a flusher thread sends what accumulated `INTERVAL` later. stdout and stderr share one
buffer of ordered segments, so their relative order is exact.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import threading
import time
from typing import Any

INTERVAL = 0.02
# A line still being written (no newline yet) waits this long for its end before it is
# sent on its own: `print` writes the text and the newline separately.
PARTIAL_WAIT = 0.2
_MAX_BUFFERED = 64 * 1024


class Channel:
    """Messages to the server, one JSON line each, safe to send from any thread.

    SIGINT raises KeyboardInterrupt in the main thread between any two bytecodes; inside
    this module that could split a message line or leave a lock (ours, or one inside
    threading.Event) held forever. So the main thread marks the spans where it runs this
    module's code (`enter`/`leave`); an interrupt arriving there is deferred to the end
    of the span. Only the main thread runs signal handlers, so only it counts.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._main = threading.get_ident()
        self._depth = 0
        self._deferred = False
        self.executing = False
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._main = threading.get_ident()
        self._depth = 0

    def interrupt(self) -> None:
        """The SIGINT handler's work: KeyboardInterrupt now, later, or not at all (idle)."""
        if not self.executing:
            return
        if self._depth > 0:
            self._deferred = True
            return
        raise KeyboardInterrupt

    def enter(self) -> bool:
        """Start a span of kernel code; True when this is the main thread (pass to leave)."""
        if threading.get_ident() != self._main:
            return False
        self._depth += 1
        return True

    def leave(self, entered: bool) -> None:
        if not entered:
            return
        self._depth -= 1
        if self._depth == 0 and self._deferred:
            self._deferred = False
            if self.executing:
                raise KeyboardInterrupt

    def send(self, msg: dict[str, Any]) -> None:
        entered = self.enter()
        try:
            data = (json.dumps(msg, default=repr) + "\n").encode()
            with self._lock:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
        finally:
            self.leave(entered)


class OutputBuffer:
    """Pending stdout/stderr text, as ordered (stream, text) segments."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._lock = threading.RLock()
        self._segments: list[list[str]] = []
        self._size = 0
        self._last_send = 0.0
        self._last_write = 0.0
        self._wake = threading.Event()
        self._threaded = True
        threading.Thread(target=self._flusher, name="kernel-output", daemon=True).start()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # a forked child has no flusher thread: it sends every write at once
        self._lock = threading.RLock()
        self._threaded = False

    def write(self, name: str, text: str) -> None:
        entered = self._channel.enter()
        try:
            self._write(name, text)
        finally:
            self._channel.leave(entered)

    def _write(self, name: str, text: str) -> None:
        with self._lock:
            if self._segments and self._segments[-1][0] == name:
                self._segments[-1][1] += text
            else:
                self._segments.append([name, text])
            self._size += len(text)
            self._last_write = time.monotonic()
            idle = "\n" in text and time.monotonic() - self._last_send >= INTERVAL
            if not self._threaded or idle or self._size > _MAX_BUFFERED:
                self._flush()
            else:
                self._wake.set()

    def flush(self) -> None:
        entered = self._channel.enter()
        try:
            self._flush()
        finally:
            self._channel.leave(entered)

    def _flush(self) -> None:
        with self._lock:
            segments, self._segments, self._size = self._segments, [], 0
            for name, text in segments:
                self._channel.send({"t": "stream", "name": name, "text": text})
            if segments:
                self._last_send = time.monotonic()

    def _flusher(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(INTERVAL)
            with self._lock:
                tail = self._segments[-1][1] if self._segments else "\n"
                if not tail.endswith("\n") and time.monotonic() - self._last_write < PARTIAL_WAIT:
                    continue  # still set: look again after INTERVAL
                self._wake.clear()
                self._flush()


class _BinaryOut(io.RawIOBase):
    """`sys.stdout.buffer`: bytes decoded as UTF-8 into the text stream."""

    def __init__(self, text: OutStream) -> None:
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._text.write(self._decoder.decode(data))
        return len(data)

    def flush(self) -> None:
        self._text.flush()


class OutStream(io.TextIOBase):
    """`sys.stdout` / `sys.stderr` of a kernel: text into the shared output buffer."""

    def __init__(self, output: OutputBuffer, name: str, fd: int) -> None:
        self._output = output
        self._name = name
        self._fd = fd
        self._binary = _BinaryOut(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only in io.TextIOBase
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def buffer(self) -> _BinaryOut:
        return self._binary

    def fileno(self) -> int:
        # subprocesses given sys.stdout write to the real fd, which the server captures
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            self._output.write(self._name, s)
        return len(s)

    def flush(self) -> None:
        self._output.flush()
