"""The wire form of a stored event: the same JSON on SSE, in JSON pages and on NATS."""

from typing import Any

import msgspec

from threadlog.domain.events import ConversationEvent, event_data, schema_version
from threadlog.infra.store import LoggedEvent


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
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


def encode_envelope(item: EventEnvelope) -> bytes:
    encoded = _encoder.encode(item)
    # U+2028/U+2029 are valid raw in JSON, but many line readers split on them: escape.
    if b"\xe2\x80\xa8" in encoded or b"\xe2\x80\xa9" in encoded:
        encoded = encoded.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return encoded
