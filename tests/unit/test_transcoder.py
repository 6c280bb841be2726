"""MsgspecTranscoder reads and writes exactly what eventsourcing's JSONTranscoder does.

Stores written before it must read the same, and code that still uses JSONTranscoder
must read what it writes: every event type is encoded with one and decoded with the
other, both ways, and the bytes are compared (but for how a float is spelt: `1e+16`
and `1e16` are the same number).
"""

import dataclasses
import datetime
import enum
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from threadlog.domain import events, identity
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import Cause
from threadlog.infra.store.transcoder import MsgspecMapper, MsgspecTranscoder

T = dict[str, Any]


def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    """As `Application.register_transcodings` sets them up."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


OLD = registered(JSONTranscoder())
NEW = registered(MsgspecTranscoder())
SEALED = {"$sealed": "bm9uY2UgYW5kIGNpcGhlcnRleHQ=", "$key": uuid.uuid4().hex}
NESTED: dict[str, Any] = {
    "ünïcode": '日本語 🦜 \u2028 \u2029 \x00\x1f\x7f "quoted" back\\slash\nnew line',
    "none": None,
    "list": [1, -2, 0.1, 2.5e-8, 1e16, -0.0, True, False, None, [], {}, [[{"deep": "é"}]]],
    "dict": {"a": {"b": {"c": [1.5, "x"]}}},
    "big": 2**70,
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "when": datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC),
    "amount": Decimal("12.3400"),
}
# A value for every field of every event type (the test below fails on a new field).
SAMPLES: dict[str, list[Any]] = {
    "originator_topic": ["threadlog.domain.conversation:Conversation"],
    "event_id": [uuid.uuid4()],
    "actor": ["user:ålice"],
    "correlation_id": ["req-1"],
    "causation_id": [None, "msg-1"],
    "prev_hash": ["0" * 64],
    "hash": ["f" * 64],
    "owner": ["ålice"],
    "agent": ["assistant"],
    "agent_id": ["", "3d6f1c2a-9b8e-4f7d-a1c3-5e2b7d9f0a14"],
    "agent_version": [0, 7],
    "title": ["Grüße, 世界"],
    "metadata": [{}, NESTED],
    "busy_policy": ["enqueue"],
    "message_id": [str(uuid.uuid4())],
    "run_id": [str(uuid.uuid4())],
    "role": ["user", "auditor"],
    "content": ["héllo 🦜", SEALED],
    "client_message_id": [None, "client-1"],
    "queued": [False, True],
    "model": ["demo"],
    "settings": [{"temperature": 0.7, "max_tokens": 100, "stop": ["\n"]}],
    "part": [0, 3],
    "delta": [" token", SEALED, "\u2028"],
    "tool_call_id": ["call-1"],
    "tool_name": ["calculator"],
    "args": [{"expression": "1 + 2"}, "raw {not json", None, SEALED],
    "result": [None, 3.0, {"rows": [[1, "a"], [2, None]]}, SEALED],
    "error": [None, "division by zero", SEALED],
    "output": [None, {"answer": 42, "items": ["ä", 1.25]}, [1, 2], SEALED],
    "percent": [0.0, 33.333333333333336, 100.0],
    "note": ["half way", SEALED],
    "model_messages": ['[{"parts":[{"content":"hi"}]}]', SEALED],
    "usage": [{"input_tokens": 12, "output_tokens": 34, "requests": 1}],
    "cost_usd": [None, 0.000123, 1e-7],
    "duration_ms": [1234.5678],
    "time_to_first_token_ms": [None, 12.0],
    "reason": ["lease expired"],
    "message": ["the model is unavailable"],
    "retry": [True, False],
    "partial_content": ["partial", SEALED],
    "up_to_position": [2, 1234],
    "summary": ["Earlier: they said hi 🦜", SEALED],
    "tokens_before": [64_001],
    "tokens_after": [31_999, 0],
    "tokenizer": ["estimate", "tiktoken:o200k_base"],
    "username": ["Ørjan"],
    "password_hash": [None, "$argon2id$v=19$m=65536,t=3,p=4$abc"],
    "roles": [["admin", "user"], []],
    "user_id": [uuid.uuid4()],
    "name": ["laptop"],
    "prefix": ["tlk_abcdefgh"],
    "digest": ["a" * 64],
}
EVENT_TYPES = [
    cls
    for module in (events, identity)
    for cls in vars(module).values()
    if isinstance(cls, type)
    and cls.__module__ == module.__name__
    and issubclass(cls, (events.ConversationEvent, identity.IdentityEvent))
    and cls not in (events.ConversationEvent, identity.IdentityEvent)
]


class Colour(enum.StrEnum):
    RED = "red"


def variants(cls: type) -> list[Any]:
    """Instances of `cls` that between them use every sample of every field."""
    names = [f.name for f in dataclasses.fields(cls)][3:]  # after id, version, timestamp
    count = max(len(SAMPLES[name]) for name in names) if names else 1
    return [
        cls(
            originator_id=uuid.uuid4(),
            originator_version=index + 1,
            timestamp=datetime.datetime(2026, 11, 30, 20, 37, 11, index * 7, tzinfo=datetime.UTC),
            **{name: SAMPLES[name][index % len(SAMPLES[name])] for name in names},
        )
        for index in range(count)
    ]


def same_bytes(old: bytes, new: bytes, value: Any) -> None:
    """The same bytes; with a float in `value`, the same JSON document, key order
    included (a float may be spelt differently: `1e+16`/`1e16`, the same number)."""
    if not holds_float(value):
        assert new == old
    assert json.loads(new, object_pairs_hook=list) == json.loads(old, object_pairs_hook=list)


def holds_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(holds_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds_float(item) for item in value)
    return isinstance(value, float)


def typed(value: Any) -> Any:
    """`value` with its types spelt out: `1 == 1.0 == True`, but not here."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def check_round_trips(value: Any) -> None:
    old, new = OLD.encode(value), NEW.encode(value)
    same_bytes(old, new, value)
    expected = typed(OLD.decode(old))
    assert typed(NEW.decode(old)) == expected  # an old row, read by the new transcoder
    assert typed(OLD.decode(new)) == expected  # a new row, read by old code
    assert typed(NEW.decode(new)) == expected


def test_every_field_of_every_event_type_has_samples() -> None:
    assert len(EVENT_TYPES) == 22
    for cls in EVENT_TYPES:
        assert {f.name for f in dataclasses.fields(cls)[3:]} <= SAMPLES.keys(), cls


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_every_event_type_round_trips_between_the_old_and_the_new_transcoder(cls: type) -> None:
    old_mapper, new_mapper = Mapper[uuid.UUID](OLD), Mapper[uuid.UUID](NEW)
    for event in variants(cls):
        old_row = old_mapper.to_stored_event(event)
        new_row = new_mapper.to_stored_event(event)
        assert (new_row.topic, new_row.originator_version) == (
            old_row.topic,
            old_row.originator_version,
        )
        same_bytes(old_row.state, new_row.state, vars(event))
        for mapper in (old_mapper, new_mapper):
            for row in (old_row, new_row):
                assert typed(vars(mapper.to_domain_event(row))) == typed(vars(event))


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_the_mapper_stores_every_event_type_as_eventsourcings_mapper_does(cls: type) -> None:
    old_mapper, new_mapper = Mapper[uuid.UUID](OLD), MsgspecMapper(NEW)
    for event in variants(cls):
        old_row, new_row = old_mapper.to_stored_event(event), new_mapper.to_stored_event(event)
        assert new_row.originator_id == old_row.originator_id
        assert (new_row.topic, new_row.originator_version) == (
            old_row.topic,
            old_row.originator_version,
        )
        same_bytes(old_row.state, new_row.state, vars(event))


@pytest.mark.parametrize(
    "value",
    [math.nan, Colour.RED, {1: "int key"}, {"when": datetime.datetime(2026, 1, 1)}],
    ids=["nan", "str-enum", "int-key", "naive-time"],
)
def test_a_value_the_mappers_fast_path_does_not_take_is_stored_as_eventsourcing_stores_it(
    value: Any,
) -> None:
    (event,) = variants(events.OutputPartial)[:1]
    event = dataclasses.replace(event, output=value)
    old_row = Mapper[uuid.UUID](OLD).to_stored_event(event)
    assert MsgspecMapper(NEW).to_stored_event(event).state == old_row.state


def test_a_conversation_snapshot_round_trips() -> None:
    cause = Cause(actor="user:a", correlation_id="req-1")
    conversation = Conversation.start(
        owner="ålice", agent="demo", title="t", metadata=NESTED, cause=cause
    )
    conversation.post_message(content="hi", client_message_id="c-1", model="demo", cause=cause)
    snapshot = Conversation.Snapshot.take(conversation)
    old_row = Mapper[uuid.UUID](OLD).to_stored_event(snapshot)
    new_row = Mapper[uuid.UUID](NEW).to_stored_event(snapshot)
    same_bytes(old_row.state, new_row.state, vars(snapshot))
    restored = Mapper[uuid.UUID](NEW).to_domain_event(old_row)
    assert typed(vars(restored)) == typed(vars(snapshot))


def test_an_upcast_v1_event_reads_as_with_the_old_transcoder() -> None:
    (event,) = variants(events.RunCompleted)[:1]
    state = vars(event) | {}
    for key in ("originator_id", "originator_version", "cost_usd"):
        state.pop(key)
    row = Mapper[uuid.UUID](OLD).to_stored_event(event)
    v1 = dataclasses.replace(row, state=OLD.encode(state))
    old_event: DomainEventProtocol[uuid.UUID] = Mapper[uuid.UUID](OLD).to_domain_event(v1)
    new_event: DomainEventProtocol[uuid.UUID] = Mapper[uuid.UUID](NEW).to_domain_event(v1)
    assert typed(vars(new_event)) == typed(vars(old_event))
    assert vars(new_event)["cost_usd"] is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]))
    | st.uuids()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_with_ids_times_and_decimals_round_trips(value: Any) -> None:
    check_round_trips(value)


@pytest.mark.parametrize(
    "value",
    [
        {"nan": math.nan, "inf": math.inf, "-inf": -math.inf},
        {1: "int key", None: "none key", False: "bool key", 2.5: "float key"},
        {"colour": Colour.RED},
        {"_type_": "uuid_hex", "_data_": "12345678123456781234567812345678"},
        [{"_type_": "uuid_hex", "_data_": "12345678-1234-5678-1234-567812345678"}],
        {"escaped": "a \\ backslash", "id": uuid.uuid4()},
        {"a": {"_type_": "not a transcoding"}},
        {"a": {"_type_": "uuid_hex", "other": None}, "b": {"_data_": 1, "x": 2}},
    ],
    ids=[
        "non-finite",
        "keys",
        "str-enum",
        "look-alike",
        "hyphenated",
        "backslash",
        "one-key",
        "no-data",
    ],
)
def test_values_json_writes_its_own_way_are_written_and_read_as_json_does(value: Any) -> None:
    check_round_trips(value)


def test_a_value_without_a_transcoding_is_refused_as_json_refuses_it() -> None:
    for value in ({"set": {1, 2}}, {"bytes": b"x"}, {"date": datetime.date(2026, 1, 1)}):
        with pytest.raises(TranscodingNotRegisteredError):
            OLD.encode(value)
        with pytest.raises(TranscodingNotRegisteredError):
            NEW.encode(value)


def test_an_unknown_transcoding_name_is_refused_as_json_refuses_it() -> None:
    data = b'{"x":{"_type_":"mystery","_data_":"?"}}'
    with pytest.raises(TranscodingNotRegisteredError):
        OLD.decode(data)
    with pytest.raises(TranscodingNotRegisteredError):
        NEW.decode(data)


def test_json_msgspec_refuses_is_decoded_by_json() -> None:
    assert math.isnan(NEW.decode(b'{"x":NaN}')["x"])
    with pytest.raises(ValueError, match="Expecting"):
        NEW.decode(b'{"x":')
