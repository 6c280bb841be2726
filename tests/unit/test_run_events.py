"""A run's model events on the Conversation aggregate: tools, output, progress, interruption."""

import pytest

from threadlog.domain.conversation import Conversation
from threadlog.domain.errors import InvalidProgress, RunNotActive
from threadlog.domain.events import (
    Cause,
    MessageCompleted,
    OutputPartial,
    RunCancelled,
    RunCompleted,
    RunInterrupted,
    RunProgressReported,
    RunStarted,
    ToolCallCompleted,
    ToolCallStarted,
    event_data,
    verify_event_hash,
)

CAUSE = Cause(actor="user:alice", correlation_id="req-1")
AGENT = Cause(actor="agent:demo", correlation_id="req-1")


def running() -> tuple[Conversation, str]:
    conversation = Conversation.start(
        owner="alice", agent="demo", title="", metadata={}, cause=CAUSE
    )
    posted = conversation.post_message(
        content="hi", client_message_id=None, model="demo", cause=CAUSE
    )
    conversation.collect_events()
    return conversation, posted.run_id


def test_a_tool_call_is_recorded_as_started_then_completed_with_its_result() -> None:
    conversation, run_id = running()
    conversation.start_tool_call(
        run_id=run_id,
        tool_call_id="c1",
        tool_name="calculator",
        args={"expression": "1+2"},
        cause=AGENT,
    )
    conversation.complete_tool_call(
        run_id=run_id,
        tool_call_id="c1",
        tool_name="calculator",
        result=3,
        error=None,
        cause=AGENT,
    )
    started, completed = conversation.collect_events()
    assert isinstance(started, ToolCallStarted) and started.args == {"expression": "1+2"}
    assert isinstance(completed, ToolCallCompleted)
    assert (completed.result, completed.error) == (3, None)
    assert verify_event_hash(started) and verify_event_hash(completed)


def test_a_tool_call_that_raised_records_its_error_and_no_result() -> None:
    conversation, run_id = running()
    conversation.complete_tool_call(
        run_id=run_id,
        tool_call_id="c1",
        tool_name="calculator",
        result="x",
        error="boom",
        cause=AGENT,
    )
    [completed] = conversation.collect_events()
    assert isinstance(completed, ToolCallCompleted)
    assert (completed.result, completed.error) == (None, "boom")
    assert conversation.active_run_id == run_id


def test_partial_output_and_the_final_output_are_recorded() -> None:
    conversation, run_id = running()
    conversation.report_output_partial(run_id=run_id, output={"city": "Par"}, cause=AGENT)
    conversation.complete_message(
        run_id=run_id,
        content='{"city":"Paris"}',
        model_messages="[]",
        cause=AGENT,
        output={"city": "Paris"},
    )
    partial, message = conversation.collect_events()
    assert isinstance(partial, OutputPartial) and partial.output == {"city": "Par"}
    assert isinstance(message, MessageCompleted) and message.output == {"city": "Paris"}


def test_progress_is_recorded_and_out_of_range_progress_is_refused() -> None:
    conversation, run_id = running()
    conversation.report_progress(run_id=run_id, percent=40, note="halfway-ish", cause=AGENT)
    [progress] = conversation.collect_events()
    assert isinstance(progress, RunProgressReported)
    assert (progress.percent, progress.note) == (40, "halfway-ish")
    with pytest.raises(InvalidProgress):
        conversation.report_progress(run_id=run_id, percent=101, note="", cause=AGENT)


def test_a_completed_run_records_its_cost() -> None:
    conversation, run_id = running()
    conversation.complete_run(
        run_id=run_id,
        usage={"input_tokens": 3},
        duration_ms=1.0,
        time_to_first_token_ms=None,
        cause=AGENT,
        cost_usd=0.25,
    )
    [completed] = conversation.collect_events()
    assert isinstance(completed, RunCompleted)
    assert event_data(completed)["cost_usd"] == 0.25


def test_an_interrupted_run_with_retry_starts_again_under_the_same_run_id() -> None:
    conversation, run_id = running()
    conversation.interrupt_run(run_id=run_id, reason="lease expired", retry=True, cause=CAUSE)
    interrupted, restarted = conversation.collect_events()
    assert isinstance(interrupted, RunInterrupted) and interrupted.retry
    assert isinstance(restarted, RunStarted) and restarted.run_id == run_id
    assert conversation.active_run_id == run_id
    assert conversation.active_attempt == 2


def test_an_interrupted_run_without_retry_ends_and_frees_the_conversation() -> None:
    conversation, run_id = running()
    conversation.interrupt_run(run_id=run_id, reason="lease expired", retry=False, cause=CAUSE)
    [interrupted] = conversation.collect_events()
    assert isinstance(interrupted, RunInterrupted)
    assert conversation.active_run_id is None
    with pytest.raises(RunNotActive):
        conversation.report_progress(run_id=run_id, percent=1, note="", cause=AGENT)


def test_a_new_run_is_a_first_attempt() -> None:
    conversation, _ = running()
    assert conversation.active_attempt == 1


def test_a_queued_run_is_cancelled_without_touching_the_active_one() -> None:
    conversation = Conversation.start(
        owner="alice", agent="demo", title="", metadata={}, cause=CAUSE, busy_policy="enqueue"
    )
    active = conversation.post_message(
        content="one", client_message_id=None, model="demo", cause=CAUSE
    )
    queued = conversation.post_message(
        content="two", client_message_id=None, model="demo", cause=CAUSE
    )
    conversation.collect_events()
    conversation.cancel_queued_run(run_id=queued.run_id, cause=CAUSE)
    [cancelled] = conversation.collect_events()
    assert isinstance(cancelled, RunCancelled) and cancelled.run_id == queued.run_id
    assert conversation.active_run_id == active.run_id and conversation.queue == []
    with pytest.raises(RunNotActive):
        conversation.cancel_queued_run(run_id=active.run_id, cause=CAUSE)
