"""The tamper-evident hash chain over a conversation's events.

Each event's ``hash`` is SHA-256 over the canonical encoding of the event (every
field but ``hash`` itself, ``prev_hash`` included). The canonical encoding is JSON
with keys sorted, no insignificant white space, UTF-8, non-ASCII characters
written as themselves. An auditor can recompute the chain from the stored events
with a few lines of any language (docs/stream.md).
"""

import hashlib
from typing import Any

import msgspec

GENESIS_HASH = "0" * 64

_encoder = msgspec.json.Encoder(order="sorted")


class ChainFields(msgspec.Struct, array_like=False):
    """An event document (without its ``hash``) as a struct: its fields in the canonical
    (sorted) order, so that it encodes as the dict does, without the dict's cost (a new
    event's hash is on the token path)."""

    actor: str
    causation_id: str | None
    conversation_id: str
    correlation_id: str
    data: dict[str, Any]
    id: str
    position: int
    prev_hash: str
    schema_version: int
    timestamp: str
    type: str


def canonical_bytes(document: dict[str, Any] | ChainFields) -> bytes:
    """The canonical JSON encoding of one event document (without its ``hash``)."""
    return _encoder.encode(document)


def chain_hash(document: dict[str, Any] | ChainFields) -> str:
    """The hex SHA-256 of an event document, which already holds ``prev_hash``."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()
