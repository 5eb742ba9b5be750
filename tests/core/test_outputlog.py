"""The output log on a real JetStream: batching, order, reading back, following, deadlines."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.outputlog import OutputEntry, OutputPublisher, StoredEntry, has_output, read_output, until
from soulbox.core.schemas import InvocationRecord, Outcome, Status, utcnow


def _publisher(js: JetStreamContext, invocation_id: str, attempt: int = 1, **kw: float) -> OutputPublisher:
    options = {"flush_s": 0.02, "chunk_bytes": 1024, **kw}
    return OutputPublisher(js, tenant="acme", invocation_id=invocation_id, attempt=attempt, **options)  # type: ignore[arg-type]


def _record(invocation_id: str, status: Status = Status.COMPLETED) -> InvocationRecord:
    return InvocationRecord(
        id=invocation_id,
        tenant="acme",
        function="f",
        status=status,
        outcome=Outcome.SUCCESS if status is Status.COMPLETED else Outcome.FUNCTION_ERROR,
        exit_code=0,
        stdout_bytes=5000,
        stdout_truncated=True,
        accepted_at=utcnow(),
    )


async def _all(js: JetStreamContext, invocation_id: str, **kw: bool) -> list[StoredEntry]:
    return [s async for s in read_output(js, "acme", invocation_id, follow=kw.pop("follow", False), **kw)]


async def test_small_writes_are_batched_in_order_and_the_end_carries_the_outcome(
    js: JetStreamContext, buckets: Buckets
) -> None:
    out = _publisher(js, "inv-batch1")
    for i in range(200):
        out.write("stdout", f"{i};".encode())
    out.write("stderr", b"oops\n")
    out.write("stdout", b"tail")
    await out.finish(_record("inv-batch1"))
    await out.confirmed()
    entries = [s.entry for s in await _all(js, "inv-batch1")]
    assert len(entries) < 10  # 202 writes, a handful of messages
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    stdout = b"".join(e.data for e in entries if e.stream == "stdout")
    assert stdout == b"".join(f"{i};".encode() for i in range(200)) + b"tail"
    assert all(len(e.data) <= 1024 for e in entries)  # pieces never exceed chunk_bytes
    streams = [e.stream for e in entries if e.kind == "output"]
    assert streams.index("stderr") == len(streams) - 2  # interleaving kept: stderr between the stdout runs
    end = entries[-1]
    assert end.kind == "end" and end.status is Status.COMPLETED and end.stdout_bytes == 5000 and end.stdout_truncated


async def test_output_is_published_while_the_attempt_runs(js: JetStreamContext, buckets: Buckets) -> None:
    out = _publisher(js, "inv-live01")
    follower = asyncio.create_task(anext(read_output(js, "acme", "inv-live01", follow=True)))
    out.write("stdout", b"first\n")
    first: StoredEntry = await asyncio.wait_for(follower, 5)  # no finish() yet: the flush interval publishes
    assert first.entry.data == b"first\n" and first.entry.stream == "stdout"
    await out.finish(_record("inv-live01"))


async def test_follow_spans_retried_attempts_and_ends_with_the_last(js: JetStreamContext, buckets: Buckets) -> None:
    reader = asyncio.create_task(_all(js, "inv-retry1", follow=True))
    first = _publisher(js, "inv-retry1", attempt=1)
    first.write("stderr", b"try 1\n")
    await first.finish(_record("inv-retry1", Status.RETRYING))
    await asyncio.sleep(0.2)
    assert not reader.done()  # a retrying end is not the invocation's end
    second = _publisher(js, "inv-retry1", attempt=2)
    second.write("stdout", b"try 2\n")
    await second.finish(_record("inv-retry1"))
    entries = [s.entry for s in await asyncio.wait_for(reader, 5)]
    assert [(e.attempt, e.kind) for e in entries] == [(1, "output"), (1, "end"), (2, "output"), (2, "end")]
    # until_end stops at the first attempt's end (what a synchronous caller streams)
    assert [s.entry.kind for s in await _all(js, "inv-retry1", follow=True, until_end=True)] == ["output", "end"]


async def test_reading_after_a_cursor_and_scoping_by_tenant(js: JetStreamContext, buckets: Buckets) -> None:
    out = _publisher(js, "inv-cursor")
    out.write("stdout", b"a")
    await asyncio.sleep(0.1)
    out.write("stdout", b"b")
    await out.finish(_record("inv-cursor"))
    await out.confirmed()
    stored = await _all(js, "inv-cursor")
    later = await _all(js, "inv-cursor", after=stored[0].stream_seq)  # type: ignore[arg-type]
    assert [s.entry.seq for s in later] == [s.entry.seq for s in stored[1:]]
    assert await has_output(js, "acme", "inv-cursor")
    assert not await has_output(js, "other", "inv-cursor")
    assert [s async for s in read_output(js, "other", "inv-cursor", follow=False)] == []


async def test_until_stops_a_follow_at_its_deadline(js: JetStreamContext, buckets: Buckets) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = [s async for s in until(read_output(js, "acme", "inv-never1", follow=True), started + 0.5)]
    assert got == [] and 0.4 < loop.time() - started < 3


async def test_a_subject_holds_only_entries_for_the_stream(js: JetStreamContext, buckets: Buckets) -> None:
    info = await js.stream_info(names.LOGS_STREAM)
    assert info.config.subjects == [names.LOGS_SUBJECTS]
    assert names.invocation_logs_subject("acme", "x1") == "sb.logs.inv.acme.x1"
    assert OutputEntry(invocation_id="x", seq=1).kind == "output"


async def test_finishing_during_a_flush_loses_nothing(js: JetStreamContext, buckets: Buckets) -> None:
    out = _publisher(js, "inv-midflush")
    payload = bytes(range(256)) * 400  # 100 KiB: a hundred pieces of 1 KiB
    out.write("stdout", payload)
    await asyncio.sleep(0)  # the flusher starts publishing them
    out.write("stdout", b"last")
    await out.finish(_record("inv-midflush"))
    await out.confirmed()
    entries = [s.entry for s in await _all(js, "inv-midflush")]
    assert b"".join(e.data for e in entries) == payload + b"last"
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1)) and entries[-1].kind == "end"
