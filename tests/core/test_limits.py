"""``Limits.fuel`` is additive: limits without a budget read and hash exactly as before it existed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from soulbox.core.codec import decode, encode
from soulbox.core.schemas import FunctionSpec, Limits
from soulbox.gateway.versions import version_of


class LimitsBeforeFuel(BaseModel):
    """The model as readers deployed before fuel have it (unknown fields forbidden)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    memory_mb: int = Field(64, ge=1, le=65536)
    timeout_ms: int = Field(10_000, ge=1, le=24 * 3600 * 1000)
    max_output_bytes: int = Field(1024 * 1024, ge=0, le=64 * 1024 * 1024)


def _spec(limits: Limits) -> FunctionSpec:
    return FunctionSpec(tenant="t", name="f", artifact="a" * 64, artifact_size=1, limits=limits)


def test_no_budget_serializes_as_before() -> None:
    limits = Limits(memory_mb=128, timeout_ms=500)
    for mode in ("python", "json"):
        dumped = limits.model_dump(mode=mode)
        assert "fuel" not in dumped
        assert LimitsBeforeFuel.model_validate(dumped).model_dump() == dumped


def test_a_budget_round_trips_on_the_wire() -> None:
    spec = _spec(Limits(fuel=123_456))
    assert decode(FunctionSpec, encode(spec)).limits.fuel == 123_456
    assert decode(FunctionSpec, encode(_spec(Limits()))).limits.fuel is None


def test_the_version_hash_changes_only_with_a_budget() -> None:
    plain = _spec(Limits())
    assert version_of(plain) == version_of(_spec(Limits(fuel=None)))
    assert version_of(plain) != version_of(_spec(Limits(fuel=1_000)))
