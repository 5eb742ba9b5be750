"""The host uid pool: distinct uids for concurrent sandboxes, waiting when all are taken."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from soulbox.runtimes.linux.uids import UidBlock, UidPool


async def test_uid_pool_hands_out_distinct_uids_and_waits_when_empty() -> None:
    pool = UidPool(5000, 2)
    a, b = await pool.acquire(), await pool.acquire()
    assert {a, b} == {5000, 5001} and pool.in_use == 2
    waiter = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    pool.release(a)
    assert await waiter == a
    with pytest.raises(ValueError):
        pool.release(4999)


def test_workers_of_one_host_get_disjoint_uid_blocks(tmp_path: Path) -> None:
    first = UidBlock(5_000_000, 100, tmp_path)
    second = UidBlock(5_000_000, 100, tmp_path)
    try:
        assert {first.start, second.start} == {5_000_000, 5_000_100}
        first.close()
        third = UidBlock(5_000_000, 100, tmp_path)  # a released block is taken again
        assert third.start == 5_000_000
        third.close()
    finally:
        first.close()
        second.close()
