"""An incremental multipart/form-data parser: fed arbitrary pieces, it never holds more than one piece
plus a boundary's length of body data."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PART_HEAD = 16 * 1024


class MultipartError(ValueError):
    """The body is not valid multipart/form-data."""


@dataclass(frozen=True)
class PartStart:
    """A part begins; `headers` are lower-cased names."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's content."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd

_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_PERCENT = re.compile(r"%(22|[01][0-9A-Fa-f])")


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart content type."""
    params = disposition_params(";" + content_type.split(";", 1)[1] if ";" in content_type else "")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MultipartError("missing or invalid multipart boundary")
    return boundary.encode("latin-1")


def disposition_params(value: str) -> dict[str, str]:
    """Parameters of a Content-Disposition (or Content-Type) value, unquoted the way browsers and httpx quote."""
    out: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            raw = _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), raw)
        out[match.group(1).lower()] = raw
    return out


class MultipartParser:
    """Feed body bytes in, get part events out; `close()` checks the closing boundary was seen."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The first boundary has no CRLF before it; prefixing one lets a single search find them all.
        self._buf = bytearray(b"\r\n")
        self._state = "preamble"

    @property
    def done(self) -> bool:
        """The closing boundary was seen."""
        return self._state == "done"

    def feed(self, data: bytes) -> list[Event]:
        """Parse as much as `data` allows."""
        self._buf += data
        events: list[Event] = []
        while True:
            if self._state == "preamble":
                at = self._buf.find(self._delimiter)
                if at < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buf) > keep:
                        del self._buf[: len(self._buf) - keep]
                    return events
                del self._buf[: at + len(self._delimiter)]
                self._state = "after"
            elif self._state == "after":
                if len(self._buf) < 2:
                    return events
                if self._buf[:2] == b"--":
                    self._state = "done"
                    self._buf.clear()
                    return events
                line_end = self._buf.find(b"\r\n")
                if line_end < 0:
                    if len(self._buf) > 1024:
                        raise MultipartError("garbage after a boundary")
                    return events
                if self._buf[:line_end].strip(b" \t"):
                    raise MultipartError("garbage after a boundary")
                del self._buf[: line_end + 2]
                self._state = "head"
            elif self._state == "head":
                if self._buf[:2] == b"\r\n":
                    head, consumed = b"", 2
                else:
                    end = self._buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self._buf) > MAX_PART_HEAD:
                            raise MultipartError("part headers too large")
                        return events
                    head, consumed = bytes(self._buf[:end]), end + 4
                if consumed > MAX_PART_HEAD:
                    raise MultipartError("part headers too large")
                del self._buf[:consumed]
                events.append(PartStart(_headers(head)))
                self._state = "body"
            elif self._state == "body":
                at = self._buf.find(self._delimiter)
                if at < 0:
                    safe = len(self._buf) - (len(self._delimiter) - 1)
                    if safe > 0:
                        events.append(PartData(bytes(self._buf[:safe])))
                        del self._buf[:safe]
                    return events
                if at:
                    events.append(PartData(bytes(self._buf[:at])))
                events.append(PartEnd())
                del self._buf[: at + len(self._delimiter)]
                self._state = "after"
            else:  # done: an epilogue is ignored
                self._buf.clear()
                return events

    def close(self) -> None:
        """Raise if the body ended before the closing boundary."""
        if self._state != "done":
            raise MultipartError("multipart body ended early")


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
