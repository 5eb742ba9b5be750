"""The host uid pool: distinct uids for concurrent sandboxes, waiting when all are taken."""

from __future__ import annotations

import asyncio

import pytest

from soulbox.runtimes.linux.uids import UidPool


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
