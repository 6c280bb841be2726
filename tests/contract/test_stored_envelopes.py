"""Serving stored events from their rows gives the bytes the domain path gives.

The replay fast path (`stored_envelopes`: rows decoded with msgspec straight into
envelopes, no domain events) must serve exactly what building each domain event and
its envelope served, on both backends: every event type, sealed and erased content,
text that needs escaping, an event stored at an older schema version (upcast), and
rows written with eventsourcing's own JSONTranscoder (stores written before).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic

from tests.backends import BACKENDS, database_url_for
from threadlog.domain.application import ConversationService
from threadlog.domain.events import (
    Cause,
    ConversationRenamed,
    MessageCompleted,
    RunStarted,
    event_data,
)
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import ContentKeys, open_content_keys
from threadlog.infra.store.envelope import (
    EventEnvelope,
    encode_envelope,
    envelope_of,
    served,
    served_envelopes,
    stored_envelopes,
)
from threadlog.infra.store.eventstore import EventLog, open_service, store_environment
from threadlog.infra.stream.feed import served_feed_event

OWNER = "ålice"
USER = Cause(actor="user:ålice", correlation_id="req-1")
AGENT = Cause(actor="agent:demo", correlation_id="req-1", causation_id="msg")
ALL_TYPES = {
    "ConversationStarted",
    "ConversationRenamed",
    "ConversationArchived",
    "HistoryCleared",
    "HistoryCompacted",
    "MessagePosted",
    "MessageCompleted",
    "RunStarted",
    "TokenStreamed",
    "ToolCallStarted",
    "ToolCallCompleted",
    "OutputPartial",
    "RunProgressReported",
    "RunCompleted",
    "RunFailed",
    "RunCancelled",
    "RunInterrupted",
}


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))


@pytest.fixture
def keys(settings: Settings) -> Iterator[ContentKeys]:
    opened = open_content_keys(settings)
    yield opened
    opened.close()


@pytest.fixture
def service(settings: Settings, keys: ContentKeys) -> Iterator[ConversationService]:
    opened = open_service(settings, keys)
    yield opened
    opened.close()


@pytest.fixture
def json_service(settings: Settings, keys: ContentKeys) -> Iterator[ConversationService]:
    """The service as it was before: eventsourcing's own JSONTranscoder."""
    env = store_environment(settings) | {"TRANSCODER_TOPIC": get_topic(JSONTranscoder)}
    opened = ConversationService(env, seal_for=keys.seal_for)
    assert type(opened.mapper.transcoder) is JSONTranscoder
    yield opened
    opened.close()


def every_event_type(service: ConversationService, seal: Callable[[Any], Any]) -> UUID:
    """A conversation with every event type, its content sealed as the service seals it."""
    started = service.start_conversation(
        owner=OWNER,
        agent="demo",
        title="Grüße \u2028 世界",
        metadata={"tags": ["ä", 1, 2.5, None], "nested": {"deep": [{"x": True}]}},
        cause=USER,
        busy_policy="enqueue",
    ).value
    cid = started.id
    service.rename(cid, title='a "new" title\n\u2029', cause=USER)
    post = service.post_message(
        cid, content="héllo 🦜\u2028", client_message_id="c-1", model="demo", cause=USER
    ).value
    live = service.get_conversation(cid)
    run = post.run_id
    for delta in ("Hel", "lo \u2028", " 🦜", "\x00\x1f"):
        live.stream_token(run_id=run, part=0, delta=seal(delta), cause=AGENT)
    args = seal({"expression": "1 + 2", "ünï": [1.5, None]})
    live.start_tool_call(run_id=run, tool_call_id="t1", tool_name="calc", args=args, cause=AGENT)
    live.complete_tool_call(
        run_id=run,
        tool_call_id="t1",
        tool_name="calc",
        result=seal({"value": 3}),
        error=None,
        cause=AGENT,
    )
    live.compact_history(
        run_id=run,
        up_to_position=2,
        summary=seal("Earlier: 🦜 \u2028 said hi"),
        tokens_before=1200,
        tokens_after=300,
        model="demo",
        tokenizer="estimate",
        usage={"input_tokens": 900, "output_tokens": 40, "requests": 1},
        cause=AGENT,
    )
    live.report_output_partial(run_id=run, output=seal({"answer": 4}), cause=AGENT)
    live.report_progress(run_id=run, percent=33.3, note=seal("thinking"), cause=AGENT)
    live.complete_message(
        run_id=run,
        content=seal("Hello 🦜"),
        model_messages=seal('[{"parts": []}]'),
        output=seal({"answer": 42}),
        cause=AGENT,
    )
    live.complete_run(
        run_id=run,
        usage={"input_tokens": 3, "output_tokens": 4, "requests": 1},
        duration_ms=1234.5,
        time_to_first_token_ms=None,
        cost_usd=1e-7,
        cause=AGENT,
    )
    service.save(live)
    failing = service.post_message(
        cid, content="again", client_message_id=None, model="demo", cause=USER
    ).value
    live = service.get_conversation(cid)
    live.fail_run(run_id=failing.run_id, error="model_error", message="down", cause=AGENT)
    service.save(live)
    retried = service.post_message(
        cid, content="third", client_message_id=None, model="demo", cause=USER
    ).value
    live = service.get_conversation(cid)
    live.interrupt_run(run_id=retried.run_id, reason="lease expired", retry=True, cause=AGENT)
    live.cancel_run(
        run_id=retried.run_id, reason="requested", partial_content=seal("part"), cause=USER
    )
    service.save(live)
    service.clear_history(cid, cause=USER)
    service.archive(cid, cause=USER)
    return cid


def append_v1_message_completed(service: ConversationService, cid: UUID) -> None:
    """A MessageCompleted as schema version 1 wrote it (no `output`): read, it is upcast."""
    log = EventLog(service)
    (completed,) = log.read(cid, topics=[get_topic(MessageCompleted)])
    state = vars(completed.event) | {}
    for key in ("originator_id", "originator_version", "output"):
        state.pop(key)
    position = service.get_conversation(cid).version + 1
    row = StoredEvent(
        originator_id=cid,
        originator_version=position,
        topic=get_topic(MessageCompleted),
        state=service.mapper.transcoder.encode(state),
    )
    service.recorder.insert_events([row])
    assert "class_version" not in service.mapper.transcoder.decode(row.state)


def domain_path(service: ConversationService, keys: ContentKeys, cid: UUID) -> list[bytes]:
    """What a replay served before: domain events, their envelopes, encoded."""
    return [
        encode_envelope(served(envelope_of(logged), keys)) for logged in EventLog(service).read(cid)
    ]


def fast_path_envelopes(service: ConversationService, cid: UUID) -> list[EventEnvelope]:
    log = EventLog(service)
    return stored_envelopes(log.read_rows(cid), cid, log.mapper)


def fast_path(service: ConversationService, keys: ContentKeys, cid: UUID) -> list[bytes]:
    """What a replay serves now (infra/stream/feed.py's catch-up pages)."""
    return [served_feed_event(item, keys).payload for item in fast_path_envelopes(service, cid)]


def opened_path(service: ConversationService, keys: ContentKeys, cid: UUID) -> list[bytes]:
    """The same, with the content opened as each envelope is built (`served_envelopes`)."""
    log = EventLog(service)
    opened = served_envelopes(log.read_rows(cid), cid, log.mapper, keys)
    return [encode_envelope(item) for item in opened]


def counting_domain_events(
    service: ConversationService, monkeypatch: pytest.MonkeyPatch
) -> list[StoredEvent]:
    """Records every domain event the service's mapper builds from now on."""
    built: list[StoredEvent] = []
    mapper: Mapper[UUID] = service.mapper
    to_domain_event = mapper.to_domain_event

    def counted(stored: StoredEvent) -> Any:
        built.append(stored)
        return to_domain_event(stored)

    monkeypatch.setattr(mapper, "to_domain_event", counted)
    return built


def test_the_fast_path_serves_every_event_type_as_the_domain_path_does(
    service: ConversationService, keys: ContentKeys
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    expected = domain_path(service, keys, cid)
    assert {envelope.type for envelope in fast_path_envelopes(service, cid)} == ALL_TYPES
    assert fast_path(service, keys, cid) == expected
    assert opened_path(service, keys, cid) == expected
    assert any(b"\\u2028" in payload for payload in expected)


def test_the_fast_path_builds_no_domain_events(
    service: ConversationService, keys: ContentKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    events = len(EventLog(service).read(cid))
    built = counting_domain_events(service, monkeypatch)
    assert len(fast_path(service, keys, cid)) == events
    assert len(opened_path(service, keys, cid)) == events
    assert built == []


def test_erased_content_is_served_as_the_domain_path_serves_it(
    service: ConversationService, keys: ContentKeys
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    keys.erase(OWNER)
    expected = domain_path(service, keys, cid)
    assert any(b'"erased":["delta"]' in payload for payload in expected)
    assert fast_path(service, keys, cid) == expected
    assert opened_path(service, keys, cid) == expected


def test_an_event_of_an_older_schema_version_is_upcast_as_the_mapper_upcasts_it(
    service: ConversationService, keys: ContentKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    append_v1_message_completed(service, cid)
    built = counting_domain_events(service, monkeypatch)
    served_now = fast_path(service, keys, cid)
    assert len(built) == 1  # only the old row takes the domain path
    assert served_now == domain_path(service, keys, cid)
    assert opened_path(service, keys, cid) == served_now
    last = fast_path_envelopes(service, cid)[-1]
    assert (last.type, last.schema_version, last.data["output"]) == ("MessageCompleted", 2, None)
    assert list(last.data) == list(event_data(EventLog(service).read(cid)[-1].event))


def test_rows_written_with_the_json_transcoder_are_served_as_before(
    service: ConversationService, json_service: ConversationService, keys: ContentKeys
) -> None:
    cid = every_event_type(json_service, keys.seal_for(OWNER))
    append_v1_message_completed(json_service, cid)
    before = domain_path(json_service, keys, cid)  # the old code, reading its own rows
    assert fast_path(service, keys, cid) == before
    assert opened_path(service, keys, cid) == before
    assert domain_path(service, keys, cid) == before


def test_rows_written_now_are_read_by_the_json_transcoder_as_before(
    service: ConversationService, json_service: ConversationService, keys: ContentKeys
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    assert domain_path(json_service, keys, cid) == fast_path(service, keys, cid)
    assert json_service.get_conversation(cid).version == service.get_conversation(cid).version


def insert_raw(
    service: ConversationService, cid: UUID, position: int, topic: str, state: Any
) -> None:
    """A row as some other writer could have stored it (eventsourcing's format, by hand)."""
    encoded = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
    service.recorder.insert_events([StoredEvent(cid, position, topic, encoded)])


def test_rows_in_forms_eventsourcing_does_not_write_are_served_as_the_mapper_reads_them(
    service: ConversationService, keys: ContentKeys
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    log = EventLog(service)
    last = log.read_rows(cid)[-1]
    run_started = log.read_rows(cid, topics=[get_topic(RunStarted)])[0]
    archived = json.loads(last.state)  # ConversationArchived: no data fields
    started = json.loads(run_started.state)
    event_id = archived["event_id"]["_data_"]
    variants: list[tuple[str, dict[str, Any]]] = [
        (
            last.topic,
            archived
            | {
                "timestamp": {
                    "_type_": "datetime_iso",
                    "_data_": "2026-11-30T20:37:11.000000+00:00",
                }
            },
        ),
        (
            last.topic,
            archived
            | {"timestamp": {"_type_": "datetime_iso", "_data_": "2026-11-30T20:37:11-05:00"}},
        ),
        (
            last.topic,
            archived
            | {"timestamp": {"_type_": "datetime_iso", "_data_": "2026-11-30 20:37:11.5+00:00"}},
        ),
        (last.topic, archived | {"event_id": {"_type_": "uuid_hex", "_data_": event_id.upper()}}),
        (
            last.topic,
            archived | {"event_id": {"_type_": "uuid_hex", "_data_": str(UUID(event_id))}},
        ),
        (last.topic, archived | {"actor": "back\\slash \u00e9 \u2028"}),
        (
            run_started.topic,
            started
            | {
                "settings": {
                    "ids": [{"_type_": "uuid_hex", "_data_": event_id}],
                    "at": {"_type_": "datetime_iso", "_data_": "2026-11-30T20:37:11+00:00"},
                }
            },
        ),
    ]
    position = last.position
    for topic, state in variants:
        position += 1
        insert_raw(service, cid, position, topic, state)
    expected = domain_path(service, keys, cid)
    assert fast_path(service, keys, cid) == expected
    assert opened_path(service, keys, cid) == expected


def test_a_row_missing_a_field_fails_as_on_the_domain_path(
    service: ConversationService, keys: ContentKeys
) -> None:
    cid = every_event_type(service, keys.seal_for(OWNER))
    log = EventLog(service)
    (renamed,) = log.read_rows(cid, topics=[get_topic(ConversationRenamed)])
    state = json.loads(renamed.state)
    del state["title"]
    position = log.read_rows(cid)[-1].position + 1
    insert_raw(service, cid, position, renamed.topic, state)
    with pytest.raises(AttributeError):
        domain_path(service, keys, cid)
    with pytest.raises(AttributeError):
        fast_path(service, keys, cid)
    with pytest.raises(AttributeError):
        opened_path(service, keys, cid)


@pytest.mark.parametrize(
    "timestamp",
    ["2026-02-30T20:37:11.5+00:00", "2026-02-30T20:37:11+00:00", "0000-01-01T00:00:00+00:00"],
)
def test_a_row_whose_timestamp_is_not_a_date_fails_as_on_the_domain_path(
    service: ConversationService, keys: ContentKeys, timestamp: str
) -> None:
    """Its form is `isoformat()`'s, but it is no date: the fast path does not serve it."""
    cid = every_event_type(service, keys.seal_for(OWNER))
    log = EventLog(service)
    last = log.read_rows(cid)[-1]
    state = json.loads(last.state) | {"timestamp": {"_type_": "datetime_iso", "_data_": timestamp}}
    insert_raw(service, cid, last.position + 1, last.topic, state)
    with pytest.raises(ValueError):
        domain_path(service, keys, cid)
    with pytest.raises(ValueError):
        fast_path(service, keys, cid)
    with pytest.raises(ValueError):
        opened_path(service, keys, cid)


def test_a_page_past_a_gap_in_positions_still_holds_the_next_events(
    service: ConversationService,
) -> None:
    """Pages are read by position range first (infra/store/eventstore.py): events after
    a gap (positions missing, as when rows were deleted) still come in the page."""
    cid = service.start_conversation(
        owner=OWNER, agent="demo", title="t", metadata={}, cause=USER
    ).value.id
    log = EventLog(service)
    (first,) = log.read_rows(cid)
    for position in (5, 6, 9, 12):
        service.recorder.insert_events([StoredEvent(cid, position, first.topic, first.state)])
    positions = [1, 5, 6, 9, 12]
    for after in range(13):
        for limit in range(1, 7):
            expected = [p for p in positions if p > after][:limit]
            got = [row.position for row in log.read_rows(cid, after=after, limit=limit)]
            assert got == expected, (after, limit)
            bounded = log.read_rows(cid, after=after, up_to=9, limit=limit)
            assert [row.position for row in bounded] == [p for p in expected if p <= 9]
