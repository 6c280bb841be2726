"""The wire form of a stored event: the same JSON on SSE, in JSON pages and on NATS.

On NATS (JetStream) an event is served as stored: its personal content sealed. Over
HTTP its content is opened for the reader (`served`): `data` holds the plaintext, or
null where the owner's keys were erased (`erased` names those fields), and `sealed`
keeps the stored values so that the event can still be re-hashed.
"""

from typing import Any

import msgspec

from threadlog.domain.content import SEALED_FIELDS
from threadlog.domain.events import ConversationEvent, event_data, schema_version
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.eventstore import LoggedEvent


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


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EventEnvelope)


def served(item: EventEnvelope, keys: ContentKeys) -> EventEnvelope:
    """The event as a reader over HTTP gets it: its personal content opened, and the
    sealed values kept beside, so that it still re-hashes (docs/audit.md)."""
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
    if b"\xe2\x80\xa8" in encoded or b"\xe2\x80\xa9" in encoded:
        encoded = encoded.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return encoded
