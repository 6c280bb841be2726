"""The Agent aggregate on its own, and a conversation's runs pinned to an agent version."""

import pytest

from threadlog.domain.agent import (
    Agent,
    AgentCreated,
    AgentDefinition,
    AgentIsRetired,
    AgentNotFound,
    AgentPublished,
    AgentRetired,
    AgentRevised,
    InvalidAgent,
    system_agent_id,
)
from threadlog.domain.conversation import Conversation, Pin
from threadlog.domain.events import Cause, RunStarted

BY = {"actor": "user:alice", "correlation_id": "req-1"}
CAUSE = Cause(actor="user:alice", correlation_id="req-1")


def created(prompt: str = "one") -> Agent:
    return Agent.create(
        name="helper",
        owner="alice",
        definition=AgentDefinition(system_prompt=prompt),
        actor="user:alice",
        correlation_id="req-1",
    )


def test_creating_an_agent_records_it_and_its_first_version() -> None:
    agent = created()
    events = agent.collect_events()
    assert [type(event) for event in events] == [AgentCreated, AgentRevised]
    assert agent.latest == 1 and agent.owner == "alice" and not agent.public
    assert agent.definition().system_prompt == "one"


def test_a_revision_keeps_every_earlier_version() -> None:
    agent = created()
    assert agent.revise(AgentDefinition(system_prompt="two"), **BY)
    assert agent.latest == 2
    assert agent.definition(1).system_prompt == "one"
    assert agent.definition().system_prompt == "two"
    with pytest.raises(AgentNotFound):
        agent.definition(3)


def test_an_unchanged_definition_records_no_version() -> None:
    agent = created()
    agent.collect_events()
    assert not agent.revise(AgentDefinition(system_prompt="one"), **BY)
    assert agent.collect_events() == []


def test_publishing_twice_records_once_and_a_retired_agent_cannot_be_published() -> None:
    agent = created()
    agent.publish(**BY)
    agent.publish(**BY)
    assert [type(e) for e in agent.collect_events()][-1:] == [AgentPublished]
    agent.retire(**BY)
    assert isinstance(agent.collect_events()[-1], AgentRetired)
    with pytest.raises(AgentIsRetired):
        agent.publish(**BY)


def test_a_text_with_a_lone_surrogate_is_invalid_and_names_its_field() -> None:
    with pytest.raises(InvalidAgent) as caught:
        created().revise(AgentDefinition(description="\ud800"), **BY)
    assert caught.value.field == "description"


def test_a_system_agents_id_follows_from_its_name() -> None:
    assert system_agent_id("assistant") == system_agent_id("assistant")
    assert system_agent_id("assistant") != system_agent_id("tools-demo")


def test_a_run_records_the_agent_version_it_is_pinned_to_and_a_queued_run_keeps_it() -> None:
    conversation = Conversation.start(
        owner="alice", agent="a1", title="t", metadata={}, cause=CAUSE, busy_policy="enqueue"
    )
    first = conversation.post_message(
        content="one", client_message_id=None, model=lambda _: Pin("demo", "a1", 3), cause=CAUSE
    )
    conversation.post_message(
        content="two", client_message_id=None, model=lambda _: Pin("demo", "a1", 4), cause=CAUSE
    )
    conversation.complete_run(
        run_id=first.run_id, usage={}, duration_ms=1.0, time_to_first_token_ms=None, cause=CAUSE
    )
    runs = [e for e in conversation.collect_events() if isinstance(e, RunStarted)]
    # The queued run starts when the first ends, with the version that run used.
    assert [(run.agent_id, run.agent_version) for run in runs] == [("a1", 3), ("a1", 3)]
