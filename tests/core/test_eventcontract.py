"""The lifecycle event contract: complete, in step with the model, the billing consumer and EVENTS.md."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from soulbox.core.codec import encode
from soulbox.core.eventcontract import CONTRACT, json_schema, violations
from soulbox.core.schemas import EventType, InvocationRecord, LifecycleEvent, Outcome, Status, Tier, utcnow
from soulbox.events.billing import METERS

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python -m soulbox.core.eventcontract > infra/schemas/lifecycle-event.schema.json"


def test_the_checked_in_json_schema_is_the_models() -> None:
    checked_in = json.loads((ROOT / "infra/schemas/lifecycle-event.schema.json").read_text())
    assert checked_in == json_schema(), f"the event model changed: regenerate with `{REGENERATE}`"


def test_every_event_type_has_a_contract_and_a_section_in_events_md() -> None:
    assert set(CONTRACT) == set(EventType)
    doc = (ROOT / "EVENTS.md").read_text()
    for event_type in EventType:
        assert f"`{event_type.value}`" in doc, event_type


def test_the_contract_says_billed_for_exactly_what_billing_bills() -> None:
    assert {t for t, c in CONTRACT.items() if c.billed} == {t for meter in METERS for t in meter.types}


def test_an_event_built_as_the_worker_builds_it_keeps_the_contract() -> None:
    record = InvocationRecord(
        id="0123456789abcdef",
        tenant="acme",
        function="hello",
        status=Status.COMPLETED,
        tier=Tier.WASM,
        worker="w1",
        outcome=Outcome.SUCCESS,
        duration_ms=1.5,
        accepted_at=utcnow(),
    )
    event = LifecycleEvent.for_record(EventType.COMPLETED, record, memory_limit_mb=128)
    assert violations(json.loads(event.model_dump_json())) == []
    broken = json.loads(event.model_dump_json()) | {"duration_ms": None, "id": "x.completed"}
    assert set(violations(broken)) == {
        "duration_ms is missing",
        "id 'x.completed' does not match " + (CONTRACT[EventType.COMPLETED].id_pattern),
    }
    assert len(encode(event)) < 512  # small enough to publish per step


@given(st.dictionaries(st.sampled_from(["v", "id", "type", "tenant", "at", "outcome"]), st.none() | st.text()))
def test_violations_never_raises_on_any_map(raw: dict[str, str | None]) -> None:
    assert isinstance(violations(raw), list)
