"""The lifecycle events' contract: for each type, who publishes it, when, its id and the fields it always carries.

Lifecycle events are the interface between the runtime side and everything
that reads ``SB_EVENTS`` (billing, audit, metrics, and any consumer a user
adds), so the contract is kept in one place: :data:`CONTRACT` here. People
read it in EVENTS.md; programs read ``infra/schemas/lifecycle-event.schema.json``,
the JSON Schema of :class:`~soulbox.core.schemas.LifecycleEvent` written by
``python -m soulbox.core.eventcontract``. Tests hold real events seen on NATS
to both, and the checked-in schema to the model, so neither can drift.

On the wire an event is a msgpack map (timestamps as the msgpack Timestamp
extension) on subject ``sb.events.<type>``, alone (``Nats-Msg-Id`` = its ``id``)
or in a batch of that type (a msgpack array of maps, see :mod:`.eventbatch`);
the schema describes the map, with timestamps in their RFC 3339 form.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .schemas import LIFECYCLE_EVENT_VERSION, SCHEMA_VERSION, EventType, LifecycleEvent

SCHEMA_ID = "https://soulbox.dev/schemas/lifecycle-event.schema.json"

# Set on every event, whatever its type.
COMMON = frozenset({"v", "id", "type", "tenant", "function", "at", "attempt"})


@dataclass(frozen=True, slots=True)
class EventContract:
    """What every event of one type is: its schema version, origin, moment, id and the fields it carries."""

    type: EventType
    version: int
    publisher: str
    when: str
    id_pattern: str  # a regular expression over the whole id
    fields: frozenset[str]  # set (not null, not empty) on every event of this type, besides COMMON
    billed: bool = False

    def violations(self, raw: Mapping[str, Any]) -> list[str]:
        """What in one decoded event (the msgpack map) breaks this contract; empty when it keeps it."""
        problems = [f"{name} is missing" for name in sorted(COMMON | self.fields) if raw.get(name) in (None, "")]
        if raw.get("v") != self.version:
            problems.append(f"v is {raw.get('v')!r}, not {self.version}")
        if not re.fullmatch(self.id_pattern, str(raw.get("id", ""))):
            problems.append(f"id {raw.get('id')!r} does not match {self.id_pattern}")
        return problems


_INVOCATION = r"[A-Za-z0-9_-]{8,64}"
_SANDBOX = r"[A-Za-z0-9_-]+"
_RESULT = frozenset({"invocation_id", "outcome"})

CONTRACT: dict[EventType, EventContract] = {
    contract.type: contract
    for contract in (
        EventContract(
            EventType.ACCEPTED,
            SCHEMA_VERSION,
            "gateway, trigger service",
            "the invocation is on the work queue (before the caller gets its 202 or waits)",
            rf"{_INVOCATION}\.accepted",
            frozenset({"invocation_id"}),
        ),
        EventContract(
            EventType.SCHEDULED,
            SCHEMA_VERSION,
            "scheduler",
            "an attempt is dispatched to a worker (once per invocation unless a worker is lost)",
            rf"{_INVOCATION}\.scheduled\.\d+",
            frozenset({"invocation_id", "tier", "worker"}),
        ),
        EventContract(
            EventType.STARTED,
            SCHEMA_VERSION,
            "worker",
            "an attempt's guest starts; `at` is that moment, published at once for runs over 50 ms, "
            "else together with the attempt's end",
            rf"{_INVOCATION}\.started\.\d+",
            frozenset({"invocation_id", "tier", "worker", "memory_limit_mb"}),
        ),
        EventContract(
            EventType.COMPLETED,
            SCHEMA_VERSION,
            "worker",
            "the invocation succeeded (its record is stored right after)",
            rf"{_INVOCATION}\.completed",
            _RESULT | {"tier", "worker", "duration_ms", "memory_limit_mb"},
            billed=True,
        ),
        EventContract(
            EventType.FAILED,
            SCHEMA_VERSION,
            "worker; scheduler when no worker could run it",
            "the invocation's last attempt failed",
            rf"{_INVOCATION}\.failed",
            _RESULT | {"error"},
            billed=True,
        ),
        EventContract(
            EventType.TIMED_OUT,
            SCHEMA_VERSION,
            "worker",
            "the invocation's last attempt reached its deadline",
            rf"{_INVOCATION}\.timed_out",
            _RESULT | {"tier", "worker", "duration_ms", "memory_limit_mb", "error"},
            billed=True,
        ),
        EventContract(
            EventType.RETRYING,
            SCHEMA_VERSION,
            "worker",
            "an attempt of an asynchronous invocation with a retry policy failed; another follows",
            rf"{_INVOCATION}\.retrying\.\d+",
            _RESULT | {"tier", "worker", "error"},
        ),
        EventContract(
            EventType.SANDBOX_CREATED,
            LIFECYCLE_EVENT_VERSION,
            "worker (sandbox host)",
            "a sandbox is handed out (stored in the sandboxes bucket first); `function` is its template",
            rf"{_SANDBOX}\.created\.\d+",
            frozenset({"sandbox_id", "tier", "memory_limit_mb"}),
        ),
        EventContract(
            EventType.SANDBOX_PAUSED,
            LIFECYCLE_EVENT_VERSION,
            "worker (sandbox host)",
            "a sandbox is frozen; `seconds` is the running time since it was created or resumed",
            rf"{_SANDBOX}\.paused\.\d+",
            frozenset({"sandbox_id", "tier", "memory_limit_mb", "seconds"}),
            billed=True,
        ),
        EventContract(
            EventType.SANDBOX_RESUMED,
            LIFECYCLE_EVENT_VERSION,
            "worker (sandbox host)",
            "a paused sandbox runs again",
            rf"{_SANDBOX}\.resumed\.\d+",
            frozenset({"sandbox_id", "tier", "memory_limit_mb"}),
        ),
        EventContract(
            EventType.SANDBOX_KILLED,
            LIFECYCLE_EVENT_VERSION,
            "worker (sandbox host)",
            "a sandbox is gone (killed, timed out or its worker drained); `seconds` as for paused, "
            "absent if it was paused (that period was billed then)",
            rf"{_SANDBOX}\.killed\.\d+",
            frozenset({"sandbox_id", "tier", "memory_limit_mb"}),
            billed=True,
        ),
    )
}


def violations(raw: Mapping[str, Any]) -> list[str]:
    """What in one decoded event breaks the contract of its type (an unknown type is itself a violation)."""
    try:
        contract = CONTRACT[EventType(str(raw.get("type")))]
    except ValueError:
        return [f"unknown event type {raw.get('type')!r}"]
    return contract.violations(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of an event as published (the current version), with its id."""
    schema = LifecycleEvent.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def main() -> None:
    """Print the JSON Schema (redirect it to infra/schemas/lifecycle-event.schema.json)."""
    json.dump(json_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
