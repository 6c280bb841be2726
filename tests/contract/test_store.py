"""The event store's contract: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from tests.backends import BACKENDS, database_url_for
from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.errors import ConversationNotFound, RunAlreadyActive
from threadlog.domain.events import (
    Cause,
    MessagePosted,
    RunStarted,
    TokenStreamed,
    verify_event_hash,
)
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import EventLog, open_service, open_tracking, topics_of
from threadlog.infra.store.loop_writer import group_commit_writer

CAUSE = Cause(actor="user:alice", correlation_id="req-1")


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationService]:
    settings = Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    store = open_service(settings)
    yield store
    store.close()


def start(service: ConversationService) -> Conversation:
    return service.start_conversation(
        owner="alice", agent="demo", title="t", metadata={}, cause=CAUSE
    ).value


def run_with_tokens(service: ConversationService, deltas: list[str]) -> Conversation:
    conversation = start(service)
    posted = service.post_message(
        conversation.id, content="hi", client_message_id=None, model="demo", cause=CAUSE
    ).value
    live = service.get_conversation(conversation.id)
    for delta in deltas:
        live.stream_token(run_id=posted.run_id, part=0, delta=delta, cause=CAUSE)
    service.save(live)
    return live


def test_a_saved_conversation_loads_with_the_same_state(service: ConversationService) -> None:
    live = run_with_tokens(service, ["a", "b"])
    loaded = service.get_conversation(live.id)
    assert (loaded.version, loaded.last_hash, loaded.active_run_id) == (
        live.version,
        live.last_hash,
        live.active_run_id,
    )


def test_an_unknown_conversation_is_not_found(service: ConversationService) -> None:
    from uuid import uuid4

    with pytest.raises(ConversationNotFound):
        service.get_conversation(uuid4())


def test_the_event_log_reads_positions_in_order_with_rising_global_positions(
    service: ConversationService,
) -> None:
    live = run_with_tokens(service, ["x", "y", "z"])
    logged = EventLog(service).read(live.id)
    assert [item.event.originator_version for item in logged] == list(range(1, live.version + 1))
    globals_ = [item.global_position for item in logged]
    assert globals_ == sorted(globals_) and len(set(globals_)) == len(globals_)
    assert all(verify_event_hash(item.event) for item in logged)


def test_the_event_log_reads_a_window_and_filters_by_type(service: ConversationService) -> None:
    live = run_with_tokens(service, ["1", "2", "3", "4"])
    log = EventLog(service)
    window = log.read(live.id, after=3, up_to=5)
    assert [i.event.originator_version for i in window] == [4, 5]
    assert len(log.read(live.id, after=0, limit=2)) == 2
    typed = log.read(live.id, topics=topics_of(MessagePosted, RunStarted))
    assert [type(i.event) for i in typed] == [MessagePosted, RunStarted]


def test_two_writers_cannot_both_append_at_the_same_position(service: ConversationService) -> None:
    conversation = start(service)
    first = service.get_conversation(conversation.id)
    second = service.get_conversation(conversation.id)
    first.post_message(content="one", client_message_id=None, model="demo", cause=CAUSE)
    second.post_message(content="two", client_message_id=None, model="demo", cause=CAUSE)
    service.save(first)
    with pytest.raises(IntegrityError):
        service.save(second)


def test_posting_while_a_run_is_active_is_rejected_and_appends_nothing(
    service: ConversationService,
) -> None:
    conversation = start(service)
    service.post_message(
        conversation.id, content="a", client_message_id=None, model="d", cause=CAUSE
    )
    before = EventLog(service).read(conversation.id)
    with pytest.raises(RunAlreadyActive):
        service.post_message(
            conversation.id, content="b", client_message_id=None, model="d", cause=CAUSE
        )
    assert len(EventLog(service).read(conversation.id)) == len(before)


def test_the_same_client_message_id_appends_once(service: ConversationService) -> None:
    conversation = start(service)
    first = service.post_message(
        conversation.id, content="a", client_message_id="c-1", model="d", cause=CAUSE
    )
    again = service.post_message(
        conversation.id, content="a", client_message_id="c-1", model="d", cause=CAUSE
    )
    assert again.value.message_id == first.value.message_id and again.value.duplicate
    assert service.get_conversation(conversation.id).version == 3


@pytest.mark.parametrize(
    "content",
    ["nul \x00 inside", "😀" * 25_000, "mixed \u200b zero-width, \r\n line ends, ünïcödé"],
    ids=["nul", "100kB-emoji", "mixed"],
)
def test_message_text_round_trips_exactly(service: ConversationService, content: str) -> None:
    conversation = start(service)
    service.post_message(
        conversation.id, content=content, client_message_id=None, model="d", cause=CAUSE
    )
    [posted] = [
        i.event for i in EventLog(service).read(conversation.id, topics=topics_of(MessagePosted))
    ]
    assert isinstance(posted, MessagePosted)
    assert posted.content.encode() == content.encode()
    assert verify_event_hash(posted)


def test_a_snapshot_loads_to_the_same_state(service: ConversationService) -> None:
    live = run_with_tokens(service, ["a"] * 10)
    service.snapshot(live)
    live.stream_token(run_id=live.active_run_id or "", part=0, delta="b", cause=CAUSE)
    service.save(live)
    loaded = service.get_conversation(live.id)
    assert (loaded.version, loaded.last_hash) == (live.version, live.last_hash)


def test_the_tracking_checkpoint_is_kept_in_the_store(service: ConversationService) -> None:
    tracking = open_tracking(service)
    assert tracking.max_tracking_id("relay-x") is None
    tracking.insert_tracking(Tracking("relay-x", 5))
    tracking.insert_tracking(Tracking("relay-x", 9))
    assert tracking.max_tracking_id("relay-x") == 9


def test_a_subscription_yields_events_saved_after_it_started(service: ConversationService) -> None:
    start(service)
    start_position = EventLog(service).max_global_position()
    received: list[int] = []
    with service.recorder.subscribe(gt=start_position) as subscription:
        saver = threading.Timer(0.2, lambda: start(service))
        saver.start()
        for notification in subscription:
            received.append(notification.id)
            break
        saver.join()
    assert received == [start_position + 1]


def test_the_writer_commits_many_conversations_events_together(
    service: ConversationService,
) -> None:
    lives = [run_with_tokens(service, []) for _ in range(5)]

    async def append_all() -> list[Any]:
        writer = group_commit_writer(service)
        await writer.open()
        try:
            batches = []
            for live in lives:
                for delta in "abc":
                    live.stream_token(
                        run_id=live.active_run_id or "", part=0, delta=delta, cause=CAUSE
                    )
                batches.append(writer.append(live.collect_events()))
            return list(await asyncio.gather(*batches))
        finally:
            await writer.close()

    results = asyncio.run(append_all())
    assert [len(r) for r in results] == [3] * 5
    for live in lives:
        tokens = EventLog(service).read(live.id, topics=topics_of(TokenStreamed))
        assert [t.event.delta for t in tokens] == ["a", "b", "c"]  # type: ignore[attr-defined]


def test_a_conflict_in_a_shared_commit_fails_only_its_own_batch(
    service: ConversationService,
) -> None:
    good, bad = run_with_tokens(service, []), run_with_tokens(service, [])
    stale = service.get_conversation(bad.id)
    bad.stream_token(run_id=bad.active_run_id or "", part=0, delta="wins", cause=CAUSE)
    service.save(bad)
    stale.stream_token(run_id=stale.active_run_id or "", part=0, delta="loses", cause=CAUSE)
    good.stream_token(run_id=good.active_run_id or "", part=0, delta="ok", cause=CAUSE)

    async def both() -> list[Any]:
        writer = group_commit_writer(service)
        await writer.open()
        try:
            return list(
                await asyncio.gather(
                    writer.append(stale.collect_events()),
                    writer.append(good.collect_events()),
                    return_exceptions=True,
                )
            )
        finally:
            await writer.close()

    stale_result, good_result = asyncio.run(both())
    assert isinstance(stale_result, IntegrityError)
    assert isinstance(good_result, list) and len(good_result) == 1


def test_the_next_load_of_a_remembered_live_aggregate_replays_none_of_its_events(
    service: ConversationService,
) -> None:
    live = run_with_tokens(service, [])  # loaded once: the repository caches that copy
    for delta in "abc":
        live.stream_token(run_id=live.active_run_id or "", part=0, delta=delta, cause=CAUSE)
    service.append(live.collect_events())  # a run's path: the cached copy never sees these
    asked_after: list[int | None] = []
    store = service.repository.event_store
    read = store.get

    def spied(originator_id: Any, **kwargs: Any) -> Any:
        asked_after.append(kwargs.get("gt"))
        return read(originator_id, **kwargs)

    store.get = spied  # type: ignore[method-assign]
    service.remember(live)
    loaded = service.get_conversation(live.id)
    assert asked_after == [live.version]  # fast-forwarded from the live copy: nothing to replay
    assert loaded.version == live.version and loaded is not live
