"""eventsourcing's JSON stored format, read and written with msgspec.

eventsourcing's `JSONTranscoder` encodes with the standard library's `json` and calls
back into Python for every UUID and datetime (and decodes with a Python object hook
for every JSON object): most of the cost of reading a stored event. `MsgspecTranscoder`
reads and writes exactly the same format (`{"_type_": "uuid_hex", "_data_": …}` and the
other registered transcodings, compact separators, non-ASCII text raw), so stores
written by either read with either. Only float exponents are spelt differently
(`1e16`, not `1e+16`): the same values.

Anything the fast path does not know exactly as `json` would (a non-finite float, a
key that is not a string, a subclass of a JSON type, a type without a transcoding,
JSON that msgspec refuses) goes through `JSONTranscoder` itself, so the result, or the
error, is the one eventsourcing gives.
"""

import math
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

TYPE = "_type_"
DATA = "_data_"
# A transcoded object's key as it appears in JSON; a backslash could spell it otherwise.
# The backslash as an int: `bytes in bytes` first tries its operand as an int and
# formats a TypeError's message, several times the cost of the search.
_TYPE_KEY = b'"_type_"'
_ESCAPE = 0x5C

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
# `json` writes these natively, never through a transcoding (even when they are subclassed).
_NATIVE = (str, int, float, dict, list, tuple)
_SCALARS = frozenset({str, int, bool, type(None)})
# eventsourcing's own transcodings (not subclasses): their `encode` gives a string.
_TO_STRING = frozenset({UUIDAsHex, DatetimeAsISO, DecimalAsStr})


def most_transcoded(data: bytes) -> int | None:
    """At most how many transcoded objects the JSON `data` holds (None: unknown)."""
    if _ESCAPE in data:
        return None
    return data.count(_TYPE_KEY)


class _Unusual(Exception):
    """A value the fast path does not encode exactly as `json` would."""


class MsgspecTranscoder(JSONTranscoder):
    """A `JSONTranscoder` (same registrations, same format) that runs on msgspec.

    Chosen with `TRANSCODER_TOPIC`; being a `JSONTranscoder`, the application still
    registers its transcodings on it (`Application.register_transcodings`)."""

    def encode(self, obj: Any) -> bytes:
        try:
            return _encoder.encode(self.encodable(obj))
        except _Unusual:
            return super().encode(obj)

    def encode_state(self, fields: dict[str, Any], class_version: int) -> bytes:
        """What `encode` gives for an event's stored state: its `fields` but the
        originator's id and version, and `class_version` when above 1, without copying
        the fields first; the id and the timestamp, where eventsourcing's own
        transcodings hold them, transcoded in line. Raises `_Unusual` where `encode`
        would not take the fast path."""
        uuid_name, datetime_name = self._own_names()
        state: dict[str, Any] = {}
        for key, item in fields.items():
            kind = type(item)
            if kind in _SCALARS:
                state[key] = item
            elif kind is UUID and uuid_name:
                state[key] = {TYPE: uuid_name, DATA: item.hex}
            elif kind is datetime and datetime_name:
                state[key] = {TYPE: datetime_name, DATA: item.isoformat()}
            else:
                state[key] = self.encodable(item)
        del state["originator_id"], state["originator_version"]
        if class_version > 1:
            state["class_version"] = class_version
        return _encoder.encode(state)

    def _own_names(self) -> tuple[str | None, str | None]:
        """The names UUIDs and datetimes are stored under, where eventsourcing's own
        transcodings (not subclasses) hold them; None elsewhere."""
        uuids, datetimes = self.types.get(UUID), self.types.get(datetime)
        return (
            uuids.name if type(uuids) is UUIDAsHex else None,
            datetimes.name if type(datetimes) is DatetimeAsISO else None,
        )

    def decode(self, data: bytes) -> Any:
        try:
            decoded = _decoder.decode(data)
        except msgspec.DecodeError:
            # `json` accepts what msgspec does not (NaN, Infinity): let it decide.
            return super().decode(data)
        return self.revive(decoded, data)

    # --- encoding ----------------------------------------------------------------------

    def encodable(self, value: Any) -> Any:
        """`value` with every transcoded object replaced by its `_type_`/`_data_` form
        (`value` itself when it holds none)."""
        kind = type(value)
        if kind in _SCALARS:
            return value
        if kind is dict:
            return self._encodable_dict(value)
        if kind is list or kind is tuple:
            return self._encodable_list(value)
        if kind is float:
            if not math.isfinite(value):
                raise _Unusual  # `json` writes NaN and Infinity, msgspec null
            return value
        return self._transcoded(value)

    def _encodable_dict(self, value: dict[Any, Any]) -> dict[str, Any]:
        changed: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual  # `json` spells True, None and float keys its own way
            # Most values are strings and numbers: no call for them.
            if type(item) not in _SCALARS and (new := self.encodable(item)) is not item:
                changed[key] = new
        return {**value, **changed} if changed else value

    def _encodable_list(self, value: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
        out = [item if type(item) in _SCALARS else self.encodable(item) for item in value]
        return value if all(new is old for new, old in zip(out, value, strict=True)) else out

    def _transcoded(self, value: Any) -> dict[str, Any]:
        transcoding = self.types.get(type(value))
        # `json` writes subclasses of its own types natively, never through `default`.
        if transcoding is None or isinstance(value, _NATIVE):
            raise _Unusual
        data = transcoding.encode(value)
        if type(transcoding) not in _TO_STRING:
            data = self.encodable(data)
        return {TYPE: transcoding.name, DATA: data}

    # --- decoding ----------------------------------------------------------------------

    def revive(self, value: Any, data: bytes | None = None) -> Any:
        """Decoded JSON with every `_type_`/`_data_` object turned back into its type,
        innermost first, as `JSONTranscoder`'s object hook does. With the JSON `data`
        it came from, only the top level is walked when that is where they all are."""
        if data is not None and type(value) is dict:
            expected = most_transcoded(data)
            if expected == 0 or (expected and self._revive_top(value) == expected):
                return value
        kind = type(value)
        if kind is dict:
            return self._revive_dict(value)
        if kind is list:
            self._revive_list(value)
        return value

    def _revive_top(self, value: dict[str, Any]) -> int:
        """Revives the top level's transcoded objects of scalar data: how many."""
        revived = 0
        for key, item in value.items():
            if (
                type(item) is dict
                and len(item) == 2
                and TYPE in item
                and DATA in item
                and type(data := item[DATA]) in _SCALARS
            ):
                value[key] = self._revived(item[TYPE], data)
                revived += 1
        return revived

    def _revive_dict(self, value: dict[str, Any]) -> Any:
        for key, item in value.items():
            kind = type(item)
            if kind is dict:
                value[key] = self._revive_dict(item)
            elif kind is list:
                self._revive_list(item)
        if len(value) == 2 and TYPE in value and DATA in value:
            return self._revived(value[TYPE], value[DATA])
        return value

    def _revive_list(self, value: list[Any]) -> None:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is dict:
                value[index] = self._revive_dict(item)
            elif kind is list:
                self._revive_list(item)

    def _revived(self, name: Any, data: Any) -> Any:
        transcoding = self._transcoding_named(name)
        if type(transcoding) is UUIDAsHex and type(data) is str:
            # msgspec parses a UUID in a third of the time `UUID(data)` takes.
            try:
                return msgspec.convert(data, UUID)
            except msgspec.ValidationError:
                pass  # `UUID(data)` may still take it (braces, a urn: prefix) or say why not
        return transcoding.decode(data)

    def _transcoding_named(self, name: Any) -> Transcoding:
        try:
            return self.names[name]
        except KeyError as error:
            msg = (
                f"Data serialized with name '{name}' is not deserializable. "
                "Please register a custom transcoding for this type."
            )
            raise TranscodingNotRegisteredError(msg) from error


class MsgspecMapper(Mapper[UUID]):
    """eventsourcing's `Mapper`, whose stored state is `MsgspecTranscoder.encode_state`
    of the event's fields: the same bytes, without the copy of the fields and the walk
    over them that `encode` needs (the hot path: every streamed token is stored).

    Chosen with `MAPPER_TOPIC`. With a cipher, a compressor or another transcoder, or
    for a value the fast path does not take, it is eventsourcing's `Mapper` itself."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        transcoder = self.transcoder
        if self.cipher or self.compressor or not isinstance(transcoder, MsgspecTranscoder):
            return super().to_stored_event(domain_event)
        cls = type(domain_event)
        fields = vars(domain_event)
        try:
            state = transcoder.encode_state(fields, getattr(cls, "class_version", 1))
        except _Unusual:
            return super().to_stored_event(domain_event)
        return StoredEvent(
            originator_id=fields["originator_id"],
            originator_version=fields["originator_version"],
            topic=get_topic(cls),
            state=state,
        )
