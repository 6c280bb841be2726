"""The checked-in JSON Schema of the events is what the code generates, and covers every
event type with its current schema version and data fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs

from threadlog.domain.events import data_fields, schema_version
from threadlog.infra.store.envelope import EventEnvelope
from threadlog.infra.stream.schema import REGENERATE, SCHEMA_PATH, event_types, render

CHECKED_IN = Path(__file__).parents[2] / SCHEMA_PATH


def checked_in() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(CHECKED_IN.read_text(encoding="utf-8"))
    return schema


def test_the_checked_in_schema_matches_the_code() -> None:
    assert CHECKED_IN.read_text(encoding="utf-8") == render(), (
        f"{SCHEMA_PATH} is out of date: regenerate it with `{REGENERATE}`"
    )


def test_every_event_type_has_its_envelope_version_and_data_fields() -> None:
    definitions = checked_in()["$defs"]
    envelope_fields = set(EventEnvelope.__struct_fields__)
    for cls in event_types():
        name = cls.__name__
        envelope = definitions[name]
        assert set(envelope["properties"]) == envelope_fields
        assert envelope["properties"]["type"] == {"enum": [name]}
        assert envelope["properties"]["schema_version"]["enum"] == [schema_version(cls)]
        data = definitions[f"{name}Data"]
        assert tuple(data["properties"]) == data_fields(cls)
    assert {"MessageCompleted", "RunCompleted", "TokenStreamed"} <= {
        cls.__name__ for cls in event_types()
    }


def test_the_schema_rejects_a_payload_with_a_missing_or_unknown_data_field() -> None:
    validator = jsonschema_rs.validator_for(checked_in())
    token: dict[str, Any] = {
        "id": "6f1c3f2e-3f5a-4d5e-9a43-1b8d2f0c9e11",
        "type": "TokenStreamed",
        "conversation_id": "0b7e8f36-6c7e-4d2f-a9a4-6a3b1f9d2c44",
        "position": 7,
        "global_position": 42,
        "timestamp": "2026-11-23T15:05:19.123456+00:00",
        "actor": "agent:assistant",
        "correlation_id": "r1",
        "causation_id": None,
        "schema_version": 1,
        "prev_hash": "0" * 64,
        "hash": "a" * 64,
        "data": {"run_id": "r1", "part": 0, "delta": "Hel"},
    }
    assert validator.is_valid(token)
    assert not validator.is_valid({**token, "data": {"run_id": "r1", "part": 0}})
    assert not validator.is_valid({**token, "data": {**token["data"], "extra": 1}})
    assert not validator.is_valid({**token, "schema_version": 2})
    assert not validator.is_valid({**token, "type": "TokenStreamedd"})
