"""The wire form of a stored event: the same JSON on SSE, in JSON pages and on NATS.

On NATS (JetStream) an event is served as stored: its personal content sealed. Over
HTTP its content is opened for the reader (`served`): `data` holds the plaintext, or
null where the owner's keys were erased (`erased` names those fields), and `sealed`
keeps the stored values so that the event can still be re-hashed.

Stored events are served from their rows (`stored_envelopes`): the state decoded with
msgspec straight into the envelope, no domain event built, the same envelope as
`envelope` gives for the event the mapper would build. A row that takes more than
that (an older schema version to upcast, anything unexpected) is built the domain way.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.persistence import DatetimeAsISO, Mapper, UUIDAsHex
from eventsourcing.utils import resolve_topic

from threadlog.domain.content import SEALED_FIELDS
from threadlog.domain.events import ConversationEvent, data_fields, event_data, schema_version
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.eventstore import LoggedEvent, StoredRow, stored_event
from threadlog.infra.store.transcoder import MsgspecTranscoder, most_transcoded


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    type: str
    conversation_id: str
    position: int
    global_position: int
    timestamp: str
    actor: str
    correlation_id: str
    causation_id: str | None
    schema_version: int
    prev_hash: str
    hash: str
    data: dict[str, Any]
    # Served over HTTP only: the data fields whose content was erased …
    erased: list[str] | None = None
    # … and the stored (sealed) values of the fields opened in `data`.
    sealed: dict[str, Any] | None = None


def envelope(event: ConversationEvent, global_position: int) -> EventEnvelope:
    return EventEnvelope(
        id=str(event.event_id),
        type=type(event).__name__,
        conversation_id=str(event.originator_id),
        position=event.originator_version,
        global_position=global_position,
        timestamp=event.timestamp.isoformat(),
        actor=event.actor,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        schema_version=schema_version(type(event)),
        prev_hash=event.prev_hash,
        hash=event.hash,
        data=event_data(event),
    )


def envelope_of(logged: LoggedEvent) -> EventEnvelope:
    return envelope(logged.event, logged.global_position)


# --- from stored rows ---------------------------------------------------------------------

# What `UUIDAsHex` writes (`UUID.hex`: 32 lowercase hex digits) and `DatetimeAsISO`
# writes (`isoformat()`) of an aware datetime with a positive offset: reading these
# back and formatting them as `envelope` does (`str(UUID(…))`, `isoformat()`) changes
# nothing but the hyphens. (`isoformat()` writes no fraction when it is zero.)
_HEX_DIGITS = "0123456789abcdef"
_ISO_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(?!000000)\d{6})?\+\d\d:\d\d")


class _SlowPath(Exception):
    """A row the fast path does not serve exactly as the domain path does."""


class _Transcoded(msgspec.Struct, forbid_unknown_fields=True):
    """A stored `{"_type_": …, "_data_": …}` holding a string."""

    name: str = msgspec.field(name="_type_")
    data: str = msgspec.field(name="_data_")


# The envelope's part of a stored state, typed: msgspec checks it as it decodes.
_HEAD: list[tuple[str, Any] | tuple[str, Any, Any]] = [
    ("event_id", _Transcoded),
    ("timestamp", _Transcoded),
    ("actor", str),
    ("correlation_id", str),
    ("causation_id", str | None),
    ("prev_hash", str),
    ("hash", str),
]
# A decoded state's fields: `class_version`, the envelope's, then the event's data.
_DATA_START = 1 + len(_HEAD)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What serving an event type's rows needs to know of the type."""

    type_name: str
    version: int
    fields: tuple[str, ...]
    decoder: msgspec.json.Decoder[Any]


@cache
def _shape(topic: str) -> _Shape | None:
    cls = resolve_topic(topic)
    if not (isinstance(cls, type) and issubclass(cls, ConversationEvent)):
        return None
    fields = data_fields(cls)
    # Its data fields last, in declaration order, left as decoded (`Any`).
    state = msgspec.defstruct(
        f"Stored{cls.__name__}",
        [("class_version", int, 1), *_HEAD, *((name, Any) for name in fields)],
        kw_only=True,
    )
    return _Shape(cls.__name__, schema_version(cls), fields, msgspec.json.Decoder(state))


def stored_envelopes(
    rows: Sequence[StoredRow], conversation_id: UUID, mapper: Mapper[UUID]
) -> list[EventEnvelope]:
    """The envelopes of a conversation's stored rows, as `envelope` gives them for the
    domain events the mapper would build from the rows, without building those."""
    transcoder = mapper.transcoder
    if mapper.cipher or mapper.compressor or not isinstance(transcoder, MsgspecTranscoder):
        return [_domain_envelope(row, conversation_id, mapper) for row in rows]
    reader = _RowReader(str(conversation_id), transcoder)
    envelopes: list[EventEnvelope] = []
    for row in rows:
        try:
            envelopes.append(reader(row))
        except Exception:  # whatever it is, the domain path gives the envelope or its error
            envelopes.append(_domain_envelope(row, conversation_id, mapper))
    return envelopes


def _domain_envelope(row: StoredRow, conversation_id: UUID, mapper: Mapper[UUID]) -> EventEnvelope:
    event = mapper.to_domain_event(stored_event(conversation_id, row))
    return envelope(cast(ConversationEvent, event), row.global_position)


class _RowReader:
    """Reads a conversation's rows into envelopes with the transcoder's format."""

    def __init__(self, conversation: str, transcoder: MsgspecTranscoder) -> None:
        self._conversation = conversation
        self._transcoder = transcoder
        # The names the id and the timestamp are stored under, when eventsourcing's own
        # transcodings are registered under them (otherwise nothing matches: slow path).
        names = transcoder.names
        self._uuid = "uuid_hex" if type(names.get("uuid_hex")) is UUIDAsHex else None
        self._datetime = (
            "datetime_iso" if type(names.get("datetime_iso")) is DatetimeAsISO else None
        )

    def __call__(self, row: StoredRow) -> EventEnvelope:
        shape = _shape(row.topic)
        if shape is None:
            raise _SlowPath
        state = shape.decoder.decode(row.state)
        if state.class_version != shape.version:
            raise _SlowPath  # an older schema version: the mapper upcasts it
        event_id, timestamp = state.event_id, state.timestamp
        if event_id.name != self._uuid or timestamp.name != self._datetime:
            raise _SlowPath
        values = msgspec.structs.astuple(state)[_DATA_START:]
        data = dict(zip(shape.fields, values, strict=True))
        if most_transcoded(row.state) != 2:
            # Transcoded objects besides the id and the timestamp (or a backslash that
            # could spell one): revive them as the mapper's decoding would.
            data = self._transcoder.revive(data)
        return EventEnvelope(
            id=_uuid_string(event_id.data),
            type=shape.type_name,
            conversation_id=self._conversation,
            position=row.position,
            global_position=row.global_position,
            timestamp=_timestamp_string(timestamp.data),
            actor=state.actor,
            correlation_id=state.correlation_id,
            causation_id=state.causation_id,
            schema_version=shape.version,
            prev_hash=state.prev_hash,
            hash=state.hash,
            data=data,
        )


def _uuid_string(hex_: str) -> str:
    """`str(event.event_id)`, from what `UUIDAsHex` stored."""
    if len(hex_) != 32 or hex_.strip(_HEX_DIGITS):
        return str(UUID(hex_))  # not as `UUIDAsHex` writes it: as `UUID` reads it
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


def _timestamp_string(text: str) -> str:
    """`event.timestamp.isoformat()`, from what `DatetimeAsISO` stored."""
    if _ISO_TIMESTAMP.fullmatch(text) and _valid_date(text):
        return text  # as `isoformat()` writes it: nothing to parse
    return datetime.fromisoformat(text).isoformat()  # raises as the mapper would


def _valid_date(text: str) -> bool:
    """The calendar fields are in range (the pattern checks their form only): a
    timestamp that is not a date takes `fromisoformat`, which refuses it."""
    month, day = int(text[5:7]), int(text[8:10])
    clock = text[11:13] < "24" and text[14:16] < "60" and text[17:19] < "60"
    return 1 <= month <= 12 and 1 <= day <= 28 and clock and text[-5:-3] < "24"


# --- encoding ------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EventEnvelope)


def served(item: EventEnvelope, keys: ContentKeys) -> EventEnvelope:
    """The event as a reader over HTTP gets it: its personal content opened, and the
    sealed values kept beside, so that it still re-hashes (docs/audit.md)."""
    if item.type not in SEALED_FIELDS:
        return item  # a type without personal content: nothing to open
    opened = keys.open_data(item.type, item.data)
    if not opened.sealed:
        return item
    return msgspec.structs.replace(
        item,
        data=opened.data,
        erased=opened.erased or None,
        sealed=opened.sealed,
    )


def served_payload(type_name: str, payload: bytes, keys: ContentKeys) -> bytes:
    """A JetStream payload (content sealed) as a reader over HTTP gets it."""
    if type_name not in SEALED_FIELDS:
        return payload
    return encode_envelope(served(_decoder.decode(payload), keys))


def encode_envelope(item: EventEnvelope) -> bytes:
    encoded = _encoder.encode(item)
    # U+2028/U+2029 are valid raw in JSON, but many line readers split on them: escape.
    # (Their first byte first: one byte is found far faster than three.)
    if b"\xe2" in encoded and (b"\xe2\x80\xa8" in encoded or b"\xe2\x80\xa9" in encoded):
        encoded = encoded.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return encoded
