"""Folding a conversation's events into its state at a position."""

from collections.abc import Sequence
from typing import cast

from threadlog.domain.conversation import Conversation
from threadlog.domain.events import Cause, ConversationEvent
from threadlog.projections.conversation_state import ConversationState, StateFold

CAUSE = Cause(actor="user:alice", correlation_id="req-1")
AGENT = Cause(actor="agent:demo", correlation_id="req-1")


def collected(c: Conversation) -> list[ConversationEvent]:
    return cast(list[ConversationEvent], list(c.collect_events()))


def fold(events: Sequence[ConversationEvent]) -> ConversationState:
    state = StateFold()
    for event in events:
        state.apply(event)
    return state.state()


def conversation(busy_policy: str = "reject") -> Conversation:
    return Conversation.start(
        owner="alice",
        agent="demo",
        title="Hello",
        metadata={},
        cause=CAUSE,
        busy_policy=busy_policy,
    )


def answered(c: Conversation, question: str, tokens: list[str]) -> str:
    run_id = c.post_message(content=question, client_message_id=None, model="m", cause=CAUSE).run_id
    for token in tokens:
        c.stream_token(run_id=run_id, part=0, delta=token, cause=AGENT)
    c.complete_message(run_id=run_id, content="".join(tokens), model_messages="[]", cause=AGENT)
    c.complete_run(
        run_id=run_id, usage={}, duration_ms=1.0, time_to_first_token_ms=None, cause=AGENT
    )
    return run_id


def test_a_run_midway_shows_its_partial_text_and_no_assistant_message_yet() -> None:
    c = conversation()
    run_id = c.post_message(content="hi", client_message_id=None, model="m", cause=CAUSE).run_id
    c.stream_token(run_id=run_id, part=0, delta="Hel", cause=AGENT)
    c.stream_token(run_id=run_id, part=0, delta="lo", cause=AGENT)
    state = fold(collected(c))
    assert state.active_run is not None
    assert (state.active_run.run_id, state.active_run.partial_text) == (run_id, "Hello")
    assert [(m.role, m.content) for m in state.messages] == [("user", "hi")]
    assert state.position == 5 and state.last_hash == c.last_hash


def test_a_completed_run_leaves_its_assistant_message_and_no_active_run() -> None:
    c = conversation()
    answered(c, "hi", ["Hel", "lo"])
    state = fold(collected(c))
    assert state.active_run is None
    assert [(m.role, m.content) for m in state.messages] == [("user", "hi"), ("assistant", "Hello")]


def test_the_state_at_an_earlier_position_ignores_what_came_after() -> None:
    c = conversation()
    answered(c, "first", ["one"])
    c.rename(title="Renamed", cause=CAUSE)
    events = collected(c)
    before = fold(events[:1])
    assert (before.title, before.messages, before.position) == ("Hello", (), 1)
    assert fold(events).title == "Renamed"


def test_tool_calls_are_summarised_on_the_run_and_then_on_its_message() -> None:
    c = conversation()
    run_id = c.post_message(content="sum", client_message_id=None, model="m", cause=CAUSE).run_id
    c.start_tool_call(run_id=run_id, tool_call_id="t1", tool_name="add", args={}, cause=AGENT)
    c.start_tool_call(run_id=run_id, tool_call_id="t2", tool_name="div", args={}, cause=AGENT)
    c.complete_tool_call(
        run_id=run_id, tool_call_id="t2", tool_name="div", result=None, error="zero", cause=AGENT
    )
    events = collected(c)
    midway = fold(events)
    assert midway.active_run is not None
    assert [(t.tool_name, t.status) for t in midway.active_run.tool_calls] == [
        ("add", "running"),
        ("div", "failed"),
    ]
    c.complete_tool_call(
        run_id=run_id, tool_call_id="t1", tool_name="add", result=3, error=None, cause=AGENT
    )
    c.complete_message(run_id=run_id, content="3", model_messages="[]", cause=AGENT)
    [_, reply] = fold(events + collected(c)).messages
    assert reply.tool_calls is not None
    assert [(t.tool_name, t.status, t.error) for t in reply.tool_calls] == [
        ("add", "completed", None),
        ("div", "failed", "zero"),
    ]


def test_a_queued_message_waits_until_its_run_starts() -> None:
    c = conversation(busy_policy="enqueue")
    first = c.post_message(content="a", client_message_id=None, model="m", cause=CAUSE)
    queued = c.post_message(content="b", client_message_id=None, model="m", cause=CAUSE)
    events = collected(c)
    assert fold(events).queued_message_ids == (queued.message_id,)
    c.complete_run(
        run_id=first.run_id, usage={}, duration_ms=1.0, time_to_first_token_ms=None, cause=AGENT
    )
    state = fold(events + collected(c))
    assert state.queued_message_ids == ()
    assert state.active_run is not None and state.active_run.run_id == queued.run_id


def test_a_retried_run_streams_its_text_from_the_start_again() -> None:
    c = conversation()
    run_id = c.post_message(content="hi", client_message_id=None, model="m", cause=CAUSE).run_id
    c.stream_token(run_id=run_id, part=0, delta="lost", cause=AGENT)
    c.interrupt_run(run_id=run_id, reason="worker died", retry=True, cause=CAUSE)
    c.stream_token(run_id=run_id, part=0, delta="kept", cause=AGENT)
    state = fold(collected(c))
    assert state.active_run is not None and state.active_run.partial_text == "kept"


def test_clearing_the_history_restarts_the_messages_and_archiving_shows() -> None:
    c = conversation()
    answered(c, "old", ["x"])
    c.clear_history(cause=CAUSE)
    answered(c, "new", ["y"])
    c.archive(cause=CAUSE)
    state = fold(collected(c))
    assert [m.content for m in state.messages] == ["new", "y"]
    assert state.archived is True
