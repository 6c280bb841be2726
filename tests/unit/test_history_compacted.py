"""HistoryCompacted on the Conversation aggregate: recorded by the active run only,
about an earlier position, chained like every event."""

from typing import Any

import pytest

from threadlog.domain.conversation import Conversation
from threadlog.domain.errors import InvalidCompaction, RunNotActive
from threadlog.domain.events import Cause, HistoryCompacted, event_data, verify_event_hash

CAUSE = Cause(actor="user:alice", correlation_id="req-1")
AGENT = Cause(actor="agent:demo", correlation_id="req-1", causation_id="run")
USAGE = {"input_tokens": 900, "output_tokens": 40, "requests": 1}


def running() -> tuple[Conversation, str]:
    conversation = Conversation.start(
        owner="alice", agent="demo", title="t", metadata={}, cause=CAUSE
    )
    posted = conversation.post_message(
        content="hi", client_message_id=None, model="demo", cause=CAUSE
    )
    return conversation, posted.run_id


def compact(conversation: Conversation, run_id: str, **changes: Any) -> None:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "up_to_position": 2,
        "summary": "they said hi",
        "tokens_before": 1200,
        "tokens_after": 300,
        "model": "demo",
        "tokenizer": "estimate",
        "usage": USAGE,
    }
    conversation.compact_history(**(fields | changes), cause=AGENT)


def test_the_active_run_records_history_compacted_with_its_fields() -> None:
    conversation, run_id = running()
    compact(conversation, run_id)
    event = conversation.collect_events()[-1]
    assert isinstance(event, HistoryCompacted) and verify_event_hash(event)
    assert event.originator_version == 4
    assert event_data(event) == {
        "run_id": run_id,
        "up_to_position": 2,
        "summary": "they said hi",
        "tokens_before": 1200,
        "tokens_after": 300,
        "model": "demo",
        "tokenizer": "estimate",
        "usage": USAGE,
    }
    assert conversation.active_run_id == run_id  # the run goes on


def test_a_run_that_is_not_active_cannot_compact() -> None:
    conversation, _ = running()
    with pytest.raises(RunNotActive):
        compact(conversation, "another-run")


@pytest.mark.parametrize("up_to", [0, 3, 4])
def test_up_to_position_must_be_an_earlier_position(up_to: int) -> None:
    conversation, run_id = running()
    with pytest.raises(InvalidCompaction):
        compact(conversation, run_id, up_to_position=up_to)


def test_token_counts_cannot_be_negative() -> None:
    conversation, run_id = running()
    with pytest.raises(InvalidCompaction):
        compact(conversation, run_id, tokens_after=-1)
