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


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The canonical JSON encoding of one event document (without its ``hash``)."""
    return _encoder.encode(document)


def chain_hash(document: dict[str, Any]) -> str:
    """The hex SHA-256 of an event document, which already holds ``prev_hash``."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()
