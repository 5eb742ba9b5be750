"""CapacityQueue: one wake per freed slot, first come first served, nothing lost to timeouts or cancels."""

from __future__ import annotations

import asyncio

from soulbox.scheduler.capacity import CapacityQueue


async def waiters(queue: CapacityQueue, count: int, order: list[int]) -> list[asyncio.Task[None]]:
    async def one(i: int) -> None:
        await queue.wait(5.0)
        order.append(i)

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(0)  # all of them queued, in order
    return tasks


async def test_a_wake_frees_exactly_one_waiter_in_arrival_order() -> None:
    queue = CapacityQueue()
    order: list[int] = []
    tasks = await waiters(queue, 5, order)
    assert len(queue) == 5
    queue.wake_one()
    await asyncio.sleep(0.01)
    assert order == [0]
    queue.wake_one()
    queue.wake_one()
    await asyncio.sleep(0.01)
    assert order == [0, 1, 2]
    assert len(queue) == 2
    for _ in range(2):
        queue.wake_one()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_waiter_woken_for_nothing_keeps_its_place_at_the_front() -> None:
    queue = CapacityQueue()
    order: list[int] = []
    tasks = await waiters(queue, 2, order)

    async def requeued() -> None:
        await queue.wait(5.0, front=True)
        order.append(99)

    front = asyncio.create_task(requeued())
    await asyncio.sleep(0)
    queue.wake_one()
    await asyncio.sleep(0.01)
    assert order == [99]
    for _ in range(2):
        queue.wake_one()
    await asyncio.gather(front, *tasks)
    assert order == [99, 0, 1]


async def test_a_wait_times_out_and_leaves_the_queue() -> None:
    queue = CapacityQueue()
    started = asyncio.get_running_loop().time()
    await queue.wait(0.05)
    assert asyncio.get_running_loop().time() - started >= 0.05
    assert len(queue) == 0
    queue.wake_one()  # nobody waits: nothing to do, nothing raised


async def test_a_cancelled_waiter_that_was_woken_hands_the_wake_on() -> None:
    queue = CapacityQueue()
    order: list[int] = []
    first = asyncio.create_task(queue.wait(5.0))
    await asyncio.sleep(0)
    rest = await waiters(queue, 1, order)
    queue.wake_one()  # meant for `first`...
    first.cancel()  # ...which is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*rest), 1.0)
    assert order == [0]
    assert len(queue) == 0
