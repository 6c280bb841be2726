"""JSON Schema of the events on the wire (JetStream payloads, SSE `data:`, JSON pages).

The schema is generated, never written by hand: one envelope per event type (its
`type` and `schema_version` fixed, its `data` described by a msgspec Struct built
from the event class's own fields), joined in a union discriminated by `type`.
The checked-in copy is docs/schemas/events.schema.json; a test fails when it
drifts from the code. Regenerate it with

    python -m threadlog.infra.stream.schema docs/schemas/events.schema.json
"""

import argparse
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from threadlog.domain.content import SEALED_FIELDS
from threadlog.domain.events import ConversationEvent, data_fields, schema_version
from threadlog.infra.store.content import KEY, SEALED
from threadlog.infra.store.envelope import EventEnvelope

SCHEMA_PATH = Path("docs/schemas/events.schema.json")
DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = f"python -m threadlog.infra.stream.schema {SCHEMA_PATH}"

UUID_FORMAT = msgspec.Meta(extra_json_schema={"format": "uuid"})
SHA256_HEX = msgspec.Meta(pattern="^[0-9a-f]{64}$")

# What each envelope field means; a field of EventEnvelope missing here stops the
# generator, so the schema never documents less than the code sends.
ENVELOPE_FIELDS: dict[str, tuple[str, msgspec.Meta | None]] = {
    "id": ("The event's id; also the `Nats-Msg-Id` header.", UUID_FORMAT),
    "type": ("The event type; also the `Threadlog-Type` header.", None),
    "conversation_id": (
        "The conversation (the event stream); also `Threadlog-Conversation-Id`.",
        UUID_FORMAT,
    ),
    "position": (
        "Position in its conversation, 1, 2, 3 … without gaps; also `Threadlog-Position`.",
        msgspec.Meta(ge=1),
    ),
    "global_position": (
        "Position in the store's global log: increasing, possibly with gaps; "
        "also `Threadlog-Global-Position`.",
        msgspec.Meta(ge=1),
    ),
    "timestamp": (
        "When the event was recorded: ISO 8601 with its UTC offset.",
        msgspec.Meta(extra_json_schema={"format": "date-time"}),
    ),
    "actor": ("Who caused it, e.g. `user:<user id>`, `agent:<agent name>`, `system`.", None),
    "correlation_id": ("The request or run that the event belongs to.", None),
    "causation_id": ("The event that caused this one, when there is one.", None),
    "schema_version": (
        "The version of `data`'s schema (current: older events are served upcast); "
        "also `Threadlog-Schema-Version`.",
        None,
    ),
    "prev_hash": (
        "The hash of the conversation's previous event (64 zeros at position 1).",
        SHA256_HEX,
    ),
    "hash": (
        "SHA-256 of the event without `hash` and `global_position` (docs/audit.md).",
        SHA256_HEX,
    ),
    "data": ("The fields of this event type.", None),
    "erased": (
        "Over HTTP only: the fields of `data` whose content was erased (they are null).",
        None,
    ),
    "sealed": (
        "Over HTTP only: the stored (sealed) values of the content fields opened in "
        "`data`; put them back into `data` to re-hash the event (docs/audit.md).",
        None,
    ),
}


class SealedValue(msgspec.Struct, frozen=True, rename={"box": SEALED, "key": KEY}):
    """Personal content sealed with its owner's key (docs/erasure.md)."""

    box: Annotated[str, msgspec.Meta(description="base64 of nonce and AES-256-GCM ciphertext")]
    key: Annotated[str, msgspec.Meta(description="the id of the owner's content key")]


SEALED_DESCRIPTION = (
    "Personal content: sealed on JetStream, opened over HTTP, null over HTTP once erased."
)


def event_types() -> list[type[ConversationEvent]]:
    """Every concrete event type of the domain, in declaration order."""
    found: list[type[ConversationEvent]] = []
    pending = list(ConversationEvent.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if cls.__module__ == ConversationEvent.__module__ and cls not in found:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def description(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__")
    # dataclasses give an undocumented class its signature as docstring: not a description.
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return inspect.cleandoc(doc)


def data_struct(event_class: type[ConversationEvent]) -> type[msgspec.Struct]:
    hints = typing.get_type_hints(event_class)
    name = event_class.__name__
    sealed = SEALED_FIELDS.get(name, ())
    fields = [
        (field, _sealable(hints[field]) if field in sealed else hints[field])
        for field in data_fields(event_class)
    ]
    doc = description(event_class)
    summary = f"`data` of {name} (schema version {schema_version(event_class)})."
    return msgspec.defstruct(
        f"{name}Data",
        fields,
        kw_only=True,
        forbid_unknown_fields=True,
        namespace={"__doc__": f"{summary}\n\n{doc}" if doc else summary},
    )


def _sealable(kind: Any) -> Any:
    if kind is Any:
        return Annotated[Any, msgspec.Meta(description=SEALED_DESCRIPTION)]
    return Annotated[kind | SealedValue | None, msgspec.Meta(description=SEALED_DESCRIPTION)]


def envelope_struct(event_class: type[ConversationEvent]) -> type[msgspec.Struct]:
    name = event_class.__name__
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(EventEnvelope):
        if field.name not in ENVELOPE_FIELDS:
            raise LookupError(f"EventEnvelope.{field.name} is not described in ENVELOPE_FIELDS")
        if field.name == "type":
            continue  # the tag field
        text, constraint = ENVELOPE_FIELDS[field.name]
        kind: Any = field.type
        if field.name == "schema_version":
            kind = Literal[schema_version(event_class)]
        elif field.name == "data":
            kind = data_struct(event_class)
        metas = [msgspec.Meta(description=text)] + ([constraint] if constraint else [])
        annotated = Annotated[(kind, *metas)]
        if field.default is msgspec.NODEFAULT:
            fields.append((field.name, annotated))
        else:  # optional: `erased` and `sealed`, served over HTTP only
            fields.append((field.name, annotated, field.default))
    return msgspec.defstruct(
        name,
        fields,
        kw_only=True,
        forbid_unknown_fields=True,
        tag_field="type",
        tag=name,
        namespace={"__doc__": f"A {name} event as threadlog serves and publishes it."},
    )


def events_schema() -> dict[str, Any]:
    envelopes = [envelope_struct(cls) for cls in event_types()]
    union: Any = envelopes[0]
    for envelope in envelopes[1:]:
        union = union | envelope
    generated = msgspec.json.schema(union)
    return {
        "$schema": DIALECT,
        "title": "threadlog event",
        "description": (
            "One stored event: a JetStream message payload, an SSE `data:` line, an item "
            "of a conversation's events page. The union is discriminated by `type`. "
            f"Generated by `{REGENERATE}`."
        ),
        **generated,
    }


def render() -> str:
    return json.dumps(events_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the JSON Schema of threadlog events.")
    parser.add_argument("output", nargs="?", type=Path, help="file to write (stdout if omitted)")
    args = parser.parse_args(argv)
    text = render()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
