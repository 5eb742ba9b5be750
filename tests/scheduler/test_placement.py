from __future__ import annotations

import pytest

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import FunctionSpec, Runtime, Tier
from soulbox.scheduler.placement import TIERS_BY_RUNTIME, WorkerView, choose_tier, pick_worker

SPEC = FunctionSpec(tenant="t", name="f", artifact="0" * 64, artifact_size=1)


def worker(wid: str, capacity: int = 4, in_flight: int = 0, tiers: tuple[Tier, ...] = (Tier.WASM,)) -> WorkerView:
    return WorkerView(worker_id=wid, tiers=frozenset(tiers), capacity=capacity, reported_in_flight=in_flight)


def test_every_runtime_has_a_tier() -> None:
    assert set(TIERS_BY_RUNTIME) == set(Runtime)


def test_choose_tier_for_wasi_is_wasm() -> None:
    assert choose_tier(SPEC) is Tier.WASM
    assert choose_tier(SPEC, available=[Tier.WASM]) is Tier.WASM
    assert choose_tier(SPEC, available=[]) is Tier.WASM  # preferred even before workers come up


def test_choose_tier_rejects_a_runtime_without_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TIERS_BY_RUNTIME, Runtime.WASI, ())  # type: ignore[index]
    with pytest.raises(InvalidRequest):
        choose_tier(SPEC)


def test_pick_worker_prefers_most_free_capacity() -> None:
    workers = [worker("a", 4, 3), worker("b", 4, 1), worker("c", 8, 6)]
    assert pick_worker(workers, Tier.WASM, {}).worker_id == "b"  # type: ignore[union-attr]


def test_pick_worker_counts_own_dispatches_over_stale_heartbeats() -> None:
    workers = [worker("a", 4, 0), worker("b", 4, 1)]
    assert pick_worker(workers, Tier.WASM, {"a": 4}).worker_id == "b"  # type: ignore[union-attr]


def test_pick_worker_none_when_full_or_excluded_or_wrong_tier() -> None:
    assert pick_worker([worker("a", 2, 2)], Tier.WASM, {}) is None
    assert pick_worker([worker("a")], Tier.WASM, {}, exclude=frozenset({"a"})) is None
    assert pick_worker([worker("a", tiers=())], Tier.WASM, {}) is None
