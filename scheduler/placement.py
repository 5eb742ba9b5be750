"""Placement decisions: which tier runs a function, which worker gets it.

Pure functions over plain data, so every rule is unit-tested without NATS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import FunctionSpec, Runtime, Tier
from soulbox.runtimes.catalog import CATALOG

# Which tier can run which kind of code, in order of preference.
TIERS_BY_RUNTIME: Mapping[Runtime, tuple[Tier, ...]] = {runtime: entry.tiers for runtime, entry in CATALOG.items()}


def choose_tier(spec: FunctionSpec, available: Iterable[Tier] | None = None) -> Tier:
    """The tier that runs ``spec``: the first of its runtime's tiers that has workers.

    With ``available`` unknown (None), the preferred tier is returned.
    """
    candidates = TIERS_BY_RUNTIME.get(spec.runtime)
    if not candidates:
        raise InvalidRequest(f"no runtime tier runs {spec.runtime.value!r} functions")
    if available is None:
        return candidates[0]
    live = set(available)
    for tier in candidates:
        if tier in live:
            return tier
    return candidates[0]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the scheduler knows of one live worker."""

    worker_id: str
    tiers: frozenset[Tier]
    capacity: int
    reported_in_flight: int
    sandbox_capacity: int = 0
    sandboxes: int = 0


def pick_worker(
    workers: Iterable[WorkerView],
    tier: Tier,
    dispatched: Mapping[str, int],
    *,
    exclude: frozenset[str] = frozenset(),
) -> WorkerView | None:
    """The live worker of ``tier`` with the most free capacity, or None if all are full.

    ``dispatched`` is this scheduler's own count of unanswered dispatches per
    worker; the heartbeat's count covers other schedulers but lags, so the
    larger of the two is taken as the worker's load.
    """
    best: WorkerView | None = None
    best_free = 0
    for worker in workers:
        if tier not in worker.tiers or worker.worker_id in exclude:
            continue
        load = max(worker.reported_in_flight, dispatched.get(worker.worker_id, 0))
        free = worker.capacity - load
        if free > best_free or (free == best_free and best is not None and worker.worker_id < best.worker_id):
            best, best_free = worker, free
    return best


def pick_sandbox_worker(
    workers: Iterable[WorkerView], placed: Mapping[str, int], *, exclude: frozenset[str] = frozenset()
) -> WorkerView | None:
    """The live worker with the most free sandbox slots (``placed``: this scheduler's recent placements)."""
    best: WorkerView | None = None
    best_free = 0
    for worker in workers:
        if worker.worker_id in exclude:
            continue
        free = worker.sandbox_capacity - worker.sandboxes - placed.get(worker.worker_id, 0)
        if free > best_free or (free == best_free and best is not None and worker.worker_id < best.worker_id):
            best, best_free = worker, free
    return best
