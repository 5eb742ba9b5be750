"""Sandboxes go to the live worker with the most free sandbox slots."""

from __future__ import annotations

from soulbox.core.schemas import Tier
from soulbox.scheduler.placement import WorkerView, pick_sandbox_worker


def worker(worker_id: str, capacity: int, held: int) -> WorkerView:
    return WorkerView(worker_id, frozenset({Tier.LINUX}), 4, 0, sandbox_capacity=capacity, sandboxes=held)


def test_most_free_slots_first_then_by_id() -> None:
    workers = [worker("a", 4, 3), worker("b", 4, 1), worker("c", 4, 1)]
    assert pick_sandbox_worker(workers, {}).worker_id == "b"
    assert pick_sandbox_worker(workers, {"b": 1}).worker_id == "c"  # recent placements count
    assert pick_sandbox_worker(workers, {}, exclude=frozenset({"b", "c"})).worker_id == "a"


def test_full_or_sandbox_less_workers_get_none() -> None:
    assert pick_sandbox_worker([worker("a", 2, 2), worker("b", 0, 0)], {}) is None
    assert pick_sandbox_worker([worker("a", 2, 1)], {"a": 1}) is None
    assert pick_sandbox_worker([], {}) is None
