"""A bounded log of timestamped lines: what a long-lived sandbox's daemons print, for its logs API."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from soulbox.core.schemas import utcnow

MAX_LINE = 4096  # longer lines are cut (a line is one log entry, not a file)


@dataclass(frozen=True, slots=True)
class LogLine:
    at: datetime
    text: str
    level: str = "info"


class LineLog:
    """Keeps the last ``max_lines`` lines written to it; a partial line waits for its newline."""

    def __init__(self, max_lines: int = 2000) -> None:
        self._lines: deque[LogLine] = deque(maxlen=max_lines)
        self._partial = b""
        self.sink: Callable[[LogLine], None] | None = None  # also gets every line from now on

    def write(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:
            complete.append(self._partial)
            self._partial = b""
        for raw in complete:
            self._add(LogLine(utcnow(), raw[:MAX_LINE].decode(errors="replace").rstrip("\r")))

    def note(self, text: str, level: str = "info") -> None:
        """A line of the platform's own (lifecycle), among the daemons' lines."""
        self._add(LogLine(utcnow(), text, level))

    def _add(self, line: LogLine) -> None:
        self._lines.append(line)
        if self.sink is not None:
            self.sink(line)

    def lines(self) -> list[LogLine]:
        return list(self._lines)

    def getvalue(self) -> bytes:
        return "".join(line.text + "\n" for line in self._lines).encode()
