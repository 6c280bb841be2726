"""The Conversation aggregate, on its own."""

import dataclasses
import itertools
import uuid

import pytest

from threadlog.domain.chain import GENESIS_HASH
from threadlog.domain.conversation import Conversation, validate_content
from threadlog.domain.errors import (
    ConversationIsArchived,
    InvalidConversation,
    InvalidMessage,
    MessageTooLarge,
    RunAlreadyActive,
    RunNotActive,
)
from threadlog.domain.events import (
    Cause,
    ConversationStarted,
    MessagePosted,
    RunCancelled,
    RunStarted,
    TokenStreamed,
    event_data,
    new_event_id,
    verify_event_hash,
)

CAUSE = Cause(actor="user:alice", correlation_id="req-1")


def started() -> Conversation:
    return Conversation.start(
        owner="alice", agent="demo", title="Hello", metadata={"k": "v"}, cause=CAUSE
    )


def test_starting_a_conversation_records_conversation_started_at_position_1() -> None:
    conversation = started()
    [event] = conversation.collect_events()
    assert isinstance(event, ConversationStarted)
    assert event.originator_version == 1
    assert event.originator_id == conversation.id
    assert event_data(event) == {
        "owner": "alice",
        "agent": "demo",
        "title": "Hello",
        "metadata": {"k": "v"},
        "busy_policy": "reject",
    }
    assert event.actor == "user:alice"
    assert event.correlation_id == "req-1"
    assert event.prev_hash == GENESIS_HASH


def test_posting_a_message_records_the_message_then_the_run_it_starts() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="hi", client_message_id=None, model="demo", cause=CAUSE
    )
    events = conversation.collect_events()[1:]
    assert [type(e) for e in events] == [MessagePosted, RunStarted]
    assert posted.position == 2
    message, run = events
    assert isinstance(message, MessagePosted) and isinstance(run, RunStarted)
    assert message.content == "hi" and message.run_id == posted.run_id
    assert run.causation_id == posted.message_id
    assert conversation.active_run_id == posted.run_id


def test_every_event_links_to_its_predecessor_and_its_hash_verifies() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="hi", client_message_id=None, model="demo", cause=CAUSE
    )
    conversation.stream_token(run_id=posted.run_id, part=0, delta="Hel", cause=CAUSE)
    conversation.stream_token(run_id=posted.run_id, part=0, delta="lo", cause=CAUSE)
    events = conversation.collect_events()
    assert all(verify_event_hash(e) for e in events)  # type: ignore[arg-type]
    for earlier, later in itertools.pairwise(events):
        assert later.prev_hash == earlier.hash  # type: ignore[attr-defined]


def test_a_recorded_event_is_the_event_its_constructor_builds() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="hi", client_message_id="c-1", model="demo", cause=CAUSE
    )
    conversation.stream_token(run_id=posted.run_id, part=2, delta="Hel", cause=CAUSE)
    for event in conversation.collect_events()[1:]:
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(type(event))}  # type: ignore[arg-type]
        built = type(event)(**fields)
        assert built == event
        # Same attributes in the same order: the stored state is written in that order.
        assert list(vars(built).items()) == list(vars(event).items())


def test_event_ids_are_random_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        assert (event_id.version, event_id.variant) == (4, uuid.RFC_4122)
        assert uuid.UUID(str(event_id)) == event_id
        assert hash(uuid.UUID(event_id.hex)) == hash(event_id)


def test_a_changed_field_no_longer_verifies() -> None:
    conversation = started()
    [event] = conversation.collect_events()
    assert isinstance(event, ConversationStarted)
    object.__setattr__(event, "title", "Tampered")
    assert not verify_event_hash(event)


def test_a_second_message_while_a_run_is_active_is_rejected() -> None:
    conversation = started()
    conversation.post_message(content="one", client_message_id=None, model="demo", cause=CAUSE)
    with pytest.raises(RunAlreadyActive):
        conversation.post_message(content="two", client_message_id=None, model="demo", cause=CAUSE)


def test_the_same_client_message_id_gives_the_first_answer_and_records_nothing() -> None:
    conversation = started()
    first = conversation.post_message(
        content="x", client_message_id="c1", model="demo", cause=CAUSE
    )
    version = conversation.version
    again = conversation.post_message(
        content="x", client_message_id="c1", model="demo", cause=CAUSE
    )
    assert (again.message_id, again.run_id, again.position) == (
        first.message_id,
        first.run_id,
        first.position,
    )
    assert again.duplicate
    assert conversation.version == version


def test_a_completed_run_frees_the_conversation_for_the_next_message() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="one", client_message_id=None, model="demo", cause=CAUSE
    )
    conversation.complete_message(
        run_id=posted.run_id, content="ok", model_messages="[]", cause=CAUSE
    )
    conversation.complete_run(
        run_id=posted.run_id, usage={}, duration_ms=1.0, time_to_first_token_ms=None, cause=CAUSE
    )
    conversation.post_message(content="two", client_message_id=None, model="demo", cause=CAUSE)


def test_a_failed_run_frees_the_conversation_for_the_next_message() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="one", client_message_id=None, model="demo", cause=CAUSE
    )
    conversation.fail_run(run_id=posted.run_id, error="model_error", message="boom", cause=CAUSE)
    assert conversation.active_run_id is None
    conversation.post_message(content="two", client_message_id=None, model="demo", cause=CAUSE)


def test_tokens_for_a_run_that_is_not_active_are_refused() -> None:
    conversation = started()
    with pytest.raises(RunNotActive):
        conversation.stream_token(run_id="nope", part=0, delta="x", cause=CAUSE)


def test_token_events_are_never_merged() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="hi", client_message_id=None, model="demo", cause=CAUSE
    )
    for delta in ["a", "b", "c"]:
        conversation.stream_token(run_id=posted.run_id, part=0, delta=delta, cause=CAUSE)
    tokens = [e for e in conversation.collect_events() if isinstance(e, TokenStreamed)]
    assert [t.delta for t in tokens] == ["a", "b", "c"]


@pytest.mark.parametrize("content", ["", "   ", "\n\t "])
def test_empty_or_blank_content_is_invalid(content: str) -> None:
    with pytest.raises(InvalidMessage):
        validate_content(content, 1000)


def test_content_with_a_lone_surrogate_is_invalid() -> None:
    with pytest.raises(InvalidMessage):
        validate_content("a\ud800b", 1000)


def test_content_over_the_limit_is_too_large() -> None:
    with pytest.raises(MessageTooLarge):
        validate_content("é" * 600, 1000)


def test_nul_characters_and_emoji_are_valid_content() -> None:
    assert validate_content("a\x00b😀", 1000) == "a\x00b😀".encode()


def test_cancelling_the_active_run_frees_the_conversation_and_keeps_the_partial_text() -> None:
    conversation = started()
    posted = conversation.post_message(
        content="one", client_message_id=None, model="demo", cause=CAUSE
    )
    conversation.stream_token(run_id=posted.run_id, part=0, delta="Hal", cause=CAUSE)
    conversation.cancel_run(run_id=posted.run_id, reason="user", partial_content="Hal", cause=CAUSE)
    last = conversation.collect_events()[-1]
    assert isinstance(last, RunCancelled) and last.partial_content == "Hal"
    assert conversation.active_run_id is None


def test_cancelling_a_run_that_is_not_active_is_refused() -> None:
    conversation = started()
    with pytest.raises(RunNotActive):
        conversation.cancel_run(run_id="gone", reason="user", partial_content="", cause=CAUSE)


def test_renaming_records_the_new_title_and_a_blank_title_is_invalid() -> None:
    conversation = started()
    conversation.rename(title="Better", cause=CAUSE)
    assert conversation.title == "Better"
    with pytest.raises(InvalidConversation):
        conversation.rename(title="  ", cause=CAUSE)


def test_an_archived_conversation_takes_no_messages_and_archives_once() -> None:
    conversation = started()
    conversation.archive(cause=CAUSE)
    version = conversation.version
    conversation.archive(cause=CAUSE)
    assert conversation.version == version
    with pytest.raises(ConversationIsArchived):
        conversation.post_message(content="hi", client_message_id=None, model="d", cause=CAUSE)


def test_clearing_history_is_refused_during_a_run() -> None:
    conversation = started()
    conversation.post_message(content="hi", client_message_id=None, model="d", cause=CAUSE)
    with pytest.raises(RunAlreadyActive):
        conversation.clear_history(cause=CAUSE)
