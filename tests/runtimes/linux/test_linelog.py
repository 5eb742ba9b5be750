"""The sandbox line log: whole lines with their time, partial lines held back, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from soulbox.runtimes.linux.linelog import MAX_LINE, LineLog


def test_lines_split_across_writes_are_joined() -> None:
    log = LineLog()
    for piece in (b"he", b"llo\nwor", b"ld\n", b"tail"):
        log.write(piece)
    assert [line.text for line in log.lines()] == ["hello", "world"]
    log.note("sandbox.paused")
    assert [(line.text, line.level) for line in log.lines()][-1] == ("sandbox.paused", "info")


def test_bounded_in_lines_and_line_length() -> None:
    log = LineLog(max_lines=3)
    log.write(b"".join(b"%d\n" % i for i in range(10)))
    assert [line.text for line in log.lines()] == ["7", "8", "9"]
    log.write(b"x" * (MAX_LINE * 3))
    assert all(len(line.text) <= MAX_LINE for line in log.lines())


@given(st.lists(st.binary(max_size=50), max_size=20))
def test_what_goes_in_comes_out_in_order(pieces: list[bytes]) -> None:
    log = LineLog(max_lines=10_000)
    for piece in pieces:
        log.write(piece)
    data = b"".join(pieces)
    complete = data.split(b"\n")[:-1]
    assert [line.text for line in log.lines()] == [c.decode(errors="replace").rstrip("\r") for c in complete]
