"""The replay fast path's shortcuts give what the domain path's parsing gives.

`_timestamp_string` returns a stored timestamp as it is only when `isoformat()` would
write it so; anything else (not a date, another form) is parsed as the mapper parses
it, and fails as it does. The SSE page frames and the line-separator escaping are
byte for byte what they were.
"""

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from threadlog.http.conversations import joined_frames
from threadlog.infra.store.envelope import EventEnvelope, _timestamp_string, encode_envelope
from threadlog.infra.stream.feed import FeedEvent


def domain_path(text: str) -> str | type[Exception]:
    """What the mapper (`DatetimeAsISO`) and `envelope` make of a stored timestamp."""
    try:
        return datetime.datetime.fromisoformat(text).isoformat()
    except ValueError as error:
        return type(error)


def fast_path(text: str) -> str | type[Exception]:
    try:
        return _timestamp_string(text)
    except ValueError as error:
        return type(error)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T20:37:11.123456+00:00",
        "2026-11-30T20:37:11+00:00",
        "2024-02-29T23:59:59.000001+23:59",  # a leap day
        "0001-01-01T00:00:00+00:00",
    ],
)
def test_a_timestamp_as_isoformat_writes_it_is_served_as_stored(text: str) -> None:
    assert _timestamp_string(text) is text
    assert domain_path(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T10:00:00+00:00",  # not a date
        "2025-02-29T10:00:00+00:00",  # not a leap year
        "2026-13-01T10:00:00+00:00",
        "2026-00-10T10:00:00+00:00",
        "0000-01-01T00:00:00+00:00",  # year 0
        "2026-11-30T24:00:00+00:00",
        "2026-11-30T20:60:00+00:00",
        "2026-11-30T20:37:60+00:00",
        "\uff12\uff10\uff12\uff16-11-30T20:37:11+00:00",  # digits, but not ASCII ones
        "2026-11-30T20:37:11.12345\u096c+00:00",
        "2026-11-30T20:37:11+24:00",
        "2026-11-30T20:37:11.000000+00:00",  # isoformat() writes no zero fraction
        "2026-11-30T20:37:11+05:99",  # an offset of 6:39, written so
        "2026-11-30T20:37:11-05:00",
        "2026-11-30 20:37:11.5+00:00",
        "2026-11-30T20:37:11.1234567+00:00",
        "2026-11-30T20:37:11Z",
        "2026-11-30T20:37:11,123456+00:00",
        "2026-11-30T20:37:11.12345+00:00:00",
    ],
)
def test_any_other_timestamp_is_parsed_as_the_mapper_parses_it(text: str) -> None:
    assert fast_path(text) == domain_path(text)


@given(
    moment=st.datetimes(timezones=st.timezones()),
    microsecond=st.sampled_from([0, 1, 999_999, 123_456]),
)
def test_stored_timestamps_are_served_as_the_domain_path_serves_them(
    moment: datetime.datetime, microsecond: int
) -> None:
    text = moment.replace(microsecond=microsecond).isoformat()
    assert fast_path(text) == domain_path(text)


@given(st.text(alphabet="0123456789-+:.T \uff15", min_size=24, max_size=33))
def test_text_of_a_timestamp_s_characters_is_parsed_as_the_mapper_parses_it(text: str) -> None:
    assert fast_path(text) == domain_path(text)


def sse_frame(item: FeedEvent) -> bytes:
    """One event's frame, as the wire contract spells it (DESIGN.md)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (item.position, item.type.encode(), item.payload)


def test_a_page_s_frames_are_each_event_s_frame_joined() -> None:
    page = [
        FeedEvent(1, "ConversationStarted", b'{"a":1}'),
        FeedEvent(2, "TokenStreamed", b'{"b":"\\u2028"}'),
        FeedEvent(10_000, "TokenStreamed", b"{}"),
        FeedEvent(10_001, "Ünknown", b"{}"),
    ]
    assert joined_frames(page) == b"".join(map(sse_frame, page))
    assert joined_frames([]) == b""


def test_line_separators_are_escaped_and_other_text_is_not() -> None:
    item = EventEnvelope(
        id="i",
        type="TokenStreamed",
        conversation_id="c",
        position=1,
        global_position=1,
        timestamp="t",
        actor="a",
        correlation_id="r",
        causation_id=None,
        schema_version=1,
        prev_hash="p",
        hash="h",
        data={"delta": "it\u2019s \u2028 and \u2029 \u20ac"},
    )
    encoded = encode_envelope(item)
    assert b"\\u2028 and \\u2029" in encoded
    assert "it\u2019s".encode() in encoded
    assert "\u20ac".encode() in encoded
