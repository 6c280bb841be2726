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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache, lru_cache
from keyword import iskeyword
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.persistence import DatetimeAsISO, Mapper, UUIDAsHex
from eventsourcing.utils import resolve_topic

from threadlog.domain.content import SEALED_FIELDS
from threadlog.domain.events import ConversationEvent, data_fields, event_data, schema_version
from threadlog.infra.store.content import KEY, ContentKeys
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
# A timestamp's parts after its date and hour, as `isoformat()` writes them: every
# ":MM:SS" and every "+HH:MM" offset (sets: a row's check is a lookup, not a parse).
_CLOCKS = frozenset(f":{minute:02}:{second:02}" for minute in range(60) for second in range(60))
_OFFSETS = frozenset(f"+{hours:02}:{minutes:02}" for hours in range(24) for minutes in range(60))
_NO_FRACTION = 25  # len("2026-11-30T20:37:11+00:00")
_FRACTION = 32  # len("2026-11-30T20:37:11.123456+00:00")


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


@dataclass(frozen=True, slots=True)
class _Shape:
    """What serving an event type's rows needs to know of the type."""

    type_name: str
    version: int
    fields: tuple[str, ...]
    decoder: msgspec.json.Decoder[Any]
    data: Callable[[Any], dict[str, Any]]  # a decoded state's data, in `fields` order
    sealed: bool  # whether the type has fields that may be sealed (SEALED_FIELDS)


@cache
def _shape(topic: str) -> _Shape | None:
    cls = resolve_topic(topic)
    if not (isinstance(cls, type) and issubclass(cls, ConversationEvent)):
        return None
    fields = data_fields(cls)
    # Its data fields last, in declaration order, left as decoded (`Any`). Not tracked
    # by the collector: it lives for one row and holds only what JSON decodes to.
    state = msgspec.defstruct(
        f"Stored{cls.__name__}",
        [("class_version", int, 1), *_HEAD, *((name, Any) for name in fields)],
        kw_only=True,
        gc=False,
    )
    decoder = msgspec.json.Decoder(state)
    sealed = cls.__name__ in SEALED_FIELDS
    return _Shape(cls.__name__, schema_version(cls), fields, decoder, _data_of(fields), sealed)


def _data_of(fields: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    """`lambda state: {"a": state.a, …}` for the fields: a dict display is built by one
    instruction, several times faster than `dict(zip(fields, …))` (once per row)."""
    # Dataclass field names: identifiers, never keywords (they could not be declared).
    assert all(name.isidentifier() and not iskeyword(name) for name in fields)
    items = ", ".join(f"{name!r}: state.{name}" for name in fields)
    return cast(Callable[[Any], dict[str, Any]], eval(f"lambda state: {{{items}}}"))  # noqa: S307


def stored_envelopes(
    rows: Sequence[StoredRow], conversation_id: UUID, mapper: Mapper[UUID]
) -> list[EventEnvelope]:
    """The envelopes of a conversation's stored rows, as `envelope` gives them for the
    domain events the mapper would build from the rows, without building those."""
    return _envelopes(rows, conversation_id, mapper, None)


def served_envelopes(
    rows: Sequence[StoredRow], conversation_id: UUID, mapper: Mapper[UUID], keys: ContentKeys
) -> list[EventEnvelope]:
    """`served` of each of `stored_envelopes`: the content is opened as each envelope is
    built, so that an event makes one envelope, not one and then its opened copy."""
    return _envelopes(rows, conversation_id, mapper, keys)


def _envelopes(
    rows: Sequence[StoredRow],
    conversation_id: UUID,
    mapper: Mapper[UUID],
    keys: ContentKeys | None,
) -> list[EventEnvelope]:
    transcoder = mapper.transcoder
    if mapper.cipher or mapper.compressor or not isinstance(transcoder, MsgspecTranscoder):
        return [_domain_envelope(row, conversation_id, mapper, keys) for row in rows]
    reader = _RowReader(str(conversation_id), transcoder, keys)
    envelopes: list[EventEnvelope] = []
    for row in rows:
        try:
            envelopes.append(reader(row))
        except Exception:  # whatever it is, the domain path gives the envelope or its error
            envelopes.append(_domain_envelope(row, conversation_id, mapper, keys))
    return envelopes


def _domain_envelope(
    row: StoredRow, conversation_id: UUID, mapper: Mapper[UUID], keys: ContentKeys | None
) -> EventEnvelope:
    event = mapper.to_domain_event(stored_event(conversation_id, row))
    built = envelope(cast(ConversationEvent, event), row.global_position)
    return built if keys is None else served(built, keys)


class _RowReader:
    """Reads a conversation's rows into envelopes with the transcoder's format."""

    def __init__(
        self, conversation: str, transcoder: MsgspecTranscoder, keys: ContentKeys | None
    ) -> None:
        self._conversation = conversation
        self._transcoder = transcoder
        self._keys = keys  # None: content left sealed, as stored
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
        data = shape.data(state)
        if most_transcoded(row.state) != 2:
            # Transcoded objects besides the id and the timestamp (or a backslash that
            # could spell one): revive them as the mapper's decoding would.
            data = self._transcoder.revive(data)
        erased: list[str] | None = None
        sealed: dict[str, Any] | None = None
        if self._keys is not None and shape.sealed:
            # `data` is this envelope's own: opened in place, as `served` opens a copy.
            opened = self._keys.open_fields(shape.type_name, data)
            if opened is not None:
                erased = opened[0] or None
                sealed = opened[1]
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
            erased=erased,
            sealed=sealed,
        )


def _uuid_string(hex_: str) -> str:
    """`str(event.event_id)`, from what `UUIDAsHex` stored."""
    if len(hex_) != 32 or hex_.strip(_HEX_DIGITS):
        return str(UUID(hex_))  # not as `UUIDAsHex` writes it: as `UUID` reads it
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


def _timestamp_string(text: str) -> str:
    """`event.timestamp.isoformat()`, from what `DatetimeAsISO` stored."""
    if _as_isoformat_writes(text):
        return text  # nothing to parse
    return datetime.fromisoformat(text).isoformat()  # raises as the mapper would


def _as_isoformat_writes(text: str) -> bool:
    """Whether `text` is a valid time exactly as `isoformat()` writes it (ASCII digits,
    fields in range, a non-zero fraction or none, a "+HH:MM" offset): parsed and
    formatted again it would not change. Anything else is parsed (`fromisoformat`)."""
    size = len(text)
    if size == _FRACTION:
        if text[19] != "." or not _microseconds_as_written(text[20:26]):
            return False
    elif size != _NO_FRACTION:
        return False
    return text[13:19] in _CLOCKS and text[-6:] in _OFFSETS and _valid_date_hour(text[:13])


def _microseconds_as_written(digits: str) -> bool:
    """Six ASCII digits, not all zero (`isoformat()` writes no fraction then)."""
    return digits != "000000" and digits.isascii() and digits.isdigit()


@lru_cache(maxsize=1024)
def _valid_date_hour(prefix: str) -> bool:
    """Whether "YYYY-MM-DDTHH" is a date (year 1 on) and an hour, in ASCII digits.
    Cached: a conversation's events share few of these, and a check costs a parse."""
    digits = prefix[:4] + prefix[5:7] + prefix[8:10] + prefix[11:]
    if prefix[4] + prefix[7] + prefix[10] != "--T" or not (digits.isascii() and digits.isdigit()):
        return False
    try:
        date(int(prefix[:4]), int(prefix[5:7]), int(prefix[8:10]))
    except ValueError:
        return False
    return prefix[11:] < "24"


# --- encoding ------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_LINE_SEPARATOR_START = 0xE2  # U+2028's and U+2029's first byte in UTF-8
_decoder = msgspec.json.Decoder(EventEnvelope)


def served(item: EventEnvelope, keys: ContentKeys) -> EventEnvelope:
    """The event as a reader over HTTP gets it: its personal content opened, and the
    sealed values kept beside, so that it still re-hashes (docs/audit.md)."""
    if item.type not in SEALED_FIELDS:
        return item  # a type without personal content: nothing to open
    data = item.data.copy()
    opened = keys.open_fields(item.type, data)
    if opened is None:
        return item  # nothing sealed
    erased, sealed = opened
    return msgspec.structs.replace(item, data=data, erased=erased or None, sealed=sealed)


def served_payload(
    type_name: str, payload: bytes, keys: ContentKeys
) -> tuple[bytes, tuple[str, ...]]:
    """A NATS payload (content sealed) as a reader over HTTP gets it, and the ids of
    the keys its content was opened with (`opened_with`)."""
    if type_name not in SEALED_FIELDS:
        return payload, ()
    return served_bytes(_decoder.decode(payload), keys)


def served_bytes(item: EventEnvelope, keys: ContentKeys) -> tuple[bytes, tuple[str, ...]]:
    """`encode_envelope(served(item, keys))`, and the ids of the keys its content was
    opened with (`opened_with`): what a reader's frame of the event carries."""
    opened = served(item, keys)
    return encode_envelope(opened), opened_with(opened)


def opened_with(item: EventEnvelope) -> tuple[str, ...]:
    """The ids of the keys a served envelope's content was opened with (not the erased)."""
    sealed = item.sealed
    if not sealed:
        return ()
    erased = item.erased or ()
    return tuple(value[KEY] for name, value in sealed.items() if name not in erased)


def encode_envelope(item: EventEnvelope) -> bytes:
    encoded = _encoder.encode(item)
    # U+2028/U+2029 are valid raw in JSON, but many line readers split on them: escape.
    # Only where their first byte is (`replace` returns the same bytes when it finds
    # nothing). The byte as an int: `bytes in bytes` first tries its operand as an int
    # and formats a TypeError's message, several times the cost of the search.
    if _LINE_SEPARATOR_START in encoded:
        encoded = encoded.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return encoded
