"""Compaction you can see: a conversation longer than its agent's context budget keeps
answering, its model gets a bounded history (a summary and the recent turns), the run
records HistoryCompacted first, and the log, the transcript and the state stay whole."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.e2e.conftest import SettingsFactory
from tests.fake_openai import FakeOpenAI
from tests.support import (
    LiveServer,
    as_stored,
    create_conversation,
    post_message,
    stored_events,
    wait_for_run_end,
)
from threadlog.infra.agents.compaction import COMPACTION_MARKER, SUMMARY_HEADING
from threadlog.infra.agents.tokens import (
    ESTIMATE,
    MESSAGE_OVERHEAD,
    count_messages,
    counter_for,
)

SCHEMA = Path(__file__).parents[2] / "docs" / "schemas" / "events.schema.json"
BUDGET = 400
ROUNDS = 10


def converse(client: httpx.Client, rounds: int, prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """`rounds` messages, one run each; every run must complete. The stored events."""
    conversation_id = create_conversation(client)
    events: list[dict[str, Any]] = []
    for i in range(rounds):
        post_message(client, conversation_id, prompt.format(i=i))
        events = wait_for_run_end(client, conversation_id)
        assert events[-1]["type"] == "RunCompleted", events[-1]
    return conversation_id, events


def of_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == name]


def message_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in ("MessagePosted", "MessageCompleted")]


def messages(client: httpx.Client, conversation_id: str, at: int) -> list[dict[str, Any]]:
    """The transcript once the read model has every event up to global position `at`
    (read-your-writes: without it the read model may not have the last run's reply yet)."""
    page = client.get(
        f"/v1/conversations/{conversation_id}/messages",
        params={"limit": 1000, "min_position": at},
    )
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def assert_compacted_first(events: list[dict[str, Any]], compaction: dict[str, Any]) -> None:
    """Recorded by its run before any of the run's tokens, about earlier positions."""
    run_id = compaction["data"]["run_id"]
    started = next(e for e in events if e["type"] == "RunStarted" and e["data"]["run_id"] == run_id)
    first_token = next(
        e for e in events if e["type"] == "TokenStreamed" and e["data"]["run_id"] == run_id
    )
    assert started["position"] < compaction["position"] < first_token["position"]
    assert 1 <= compaction["data"]["up_to_position"] < started["position"]


def test_a_conversation_longer_than_the_budget_keeps_answering_with_the_demo_model(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(context_budget=BUDGET, compaction_summary_tokens=100)
    with LiveServer(settings) as server, server.client() as client:
        conversation_id, events = converse(
            client, ROUNDS, "message {i}: tell me about event logs and streams"
        )
        transcript = messages(client, conversation_id, events[-1]["global_position"])
        state_path = f"/v1/conversations/{conversation_id}/state"
        compactions = of_type(events, "HistoryCompacted")
        assert len(compactions) >= 2, [e["type"] for e in events]
        states = {
            c["position"]: client.get(state_path, params={"at": c["position"]}).json()
            for c in compactions
        }
    posted = of_type(events, "MessagePosted")
    ups = [c["data"]["up_to_position"] for c in compactions]
    assert ups == sorted(set(ups))  # each folds more than the one before
    for compaction in compactions:
        data = compaction["data"]
        assert_compacted_first(events, compaction)
        assert data["tokens_before"] > BUDGET >= data["tokens_after"]
        assert (data["model"], data["tokenizer"]) == ("demo", "estimate")
        assert data["usage"]["requests"] == 1
        folded = sum(1 for p in posted if p["position"] <= data["up_to_position"])
        # The demo's deterministic summary counts every user message folded so far.
        assert data["summary"].startswith(f"{folded} user message")
    # The transcript is whole: every message, and a compaction row where each happened.
    by_role = {role: [m for m in transcript if m["role"] == role] for role in ("user", "assistant")}
    assert len(by_role["user"]) == len(by_role["assistant"]) == ROUNDS
    rows = [m for m in transcript if m["role"] == "compaction"]
    assert [(r["position"], r["content"], r["run_id"]) for r in rows] == [
        (c["position"], c["data"]["summary"], c["data"]["run_id"]) for c in compactions
    ]
    for row, compaction in zip(rows, compactions, strict=True):
        wanted = {k: compaction["data"][k] for k in row["compaction"]}
        assert row["compaction"] == wanted and row["message_id"] == compaction["id"]
    # The state at each compaction lists every message up to it.
    for position, state in states.items():
        expected = [
            e["data"]["message_id"]
            for e in events
            if e["type"] in ("MessagePosted", "MessageCompleted") and e["position"] <= position
        ]
        assert [m["message_id"] for m in state["messages"]] == expected


def test_a_compacting_run_counts_its_summary_request_in_its_usage(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(context_budget=BUDGET, compaction_summary_tokens=100)
    with LiveServer(settings) as server, server.client() as client:
        _, events = converse(client, 6, "message {i}: tell me about event logs and streams")
    summaries = {
        c["data"]["run_id"]: c["data"]["usage"] for c in of_type(events, "HistoryCompacted")
    }
    assert summaries, "no run compacted"
    for completed in of_type(events, "RunCompleted"):
        usage, summary = completed["data"]["usage"], summaries.get(completed["data"]["run_id"])
        if summary is None:
            assert usage["requests"] == 1  # the reply alone
            continue
        assert usage["requests"] == 1 + summary["requests"]
        assert usage["input_tokens"] > summary["input_tokens"]
        assert usage["output_tokens"] > summary["output_tokens"]


def test_history_compacted_matches_the_stream_schema(make_settings: SettingsFactory) -> None:
    settings = make_settings(context_budget=250, compaction_summary_tokens=60)
    with LiveServer(settings) as server, server.client() as client:
        _, events = converse(client, 4, "message {i} about schemas")
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text(encoding="utf-8")))
    compactions = of_type(events, "HistoryCompacted")
    assert compactions
    for event in compactions:
        stored = as_stored(event)
        assert isinstance(stored["data"]["summary"], dict)  # sealed on the stream
        assert [error.message for error in validator.iter_errors(stored)] == []


REPLY_WORDS = "Here is a considered answer about logs, streams and their order. " * 3


def recording_model(seen: list[tuple[str, list[ModelMessage]]]) -> FunctionModel:
    """Answers REPLY_WORDS, or a numbered summary when asked to compact; keeps what it saw."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        instructions = info.instructions or ""
        seen.append((instructions, list(messages)))
        if instructions.startswith(COMPACTION_MARKER):
            count = sum(1 for i, _ in seen if i.startswith(COMPACTION_MARKER))
            yield f"SUMMARY-{count}: the user asked questions about logs."
            return
        for word in REPLY_WORDS.split(" "):
            yield word + " "

    return FunctionModel(stream_function=stream, model_name="recording")


def test_the_history_a_model_gets_stays_within_the_budget(make_settings: SettingsFactory) -> None:
    seen: list[tuple[str, list[ModelMessage]]] = []
    settings = make_settings(context_budget=BUDGET, compaction_summary_tokens=80)
    with LiveServer(settings, model=recording_model(seen)) as server, server.client() as client:
        _, events = converse(client, 12, "question {i}: how do event logs keep their order?")
    compactions = of_type(events, "HistoryCompacted")
    answering = [(i, m) for i, m in seen if not i.startswith(COMPACTION_MARKER)]
    summarizing = [(i, m) for i, m in seen if i.startswith(COMPACTION_MARKER)]
    assert len(answering) == 12 and len(summarizing) == len(compactions) >= 2
    whole = sum(ESTIMATE.count(e["data"]["content"]) for e in message_events(events))
    assert whole > 2 * BUDGET  # the conversation is longer than the budget …
    for instructions, sent in answering:  # … what the model gets is not
        assert ESTIMATE.count(instructions) + count_messages(ESTIMATE, sent) <= BUDGET
        assert len(sent) <= 9  # the last run would send 23 without compaction
    # After the first compaction every request opens with the latest summary.
    first_compacted = next(
        n for n, (_, sent) in enumerate(answering) if SUMMARY_HEADING in first_text(sent)
    )
    for _, sent in answering[first_compacted:]:
        assert first_text(sent).startswith(SUMMARY_HEADING)
        assert "SUMMARY-" in first_text(sent)
    # The summarizer saw the oldest turns first, then the summary before them.
    assert "User: question 0:" in first_text(summarizing[0][1])
    for _, sent in summarizing[1:]:
        assert "Summary so far:\nSUMMARY-" in first_text(sent)
    # What the run recorded is what the model got, give or take one message's overhead:
    # pydantic-ai sends the summary and the user message after it as one request.
    for compaction in compactions:
        data = compaction["data"]
        run_index = [e["data"]["run_id"] for e in of_type(events, "RunStarted")].index(
            data["run_id"]
        )
        instructions, sent = answering[run_index]
        got = ESTIMATE.count(instructions) + count_messages(ESTIMATE, sent)
        assert got <= data["tokens_after"] <= got + MESSAGE_OVERHEAD
        assert (data["model"], data["tokenizer"]) == ("recording", "estimate")


def first_text(sent: list[ModelMessage]) -> str:
    request = sent[0]
    assert isinstance(request, ModelRequest)
    part = request.parts[0]
    assert isinstance(part, UserPromptPart) and isinstance(part.content, str)
    return part.content


FAKE_REPLY = "Logs keep their order because every event has a position in its stream."


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=FAKE_REPLY, token_delay=0.0) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield fake


def input_texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for item in body.get("input") or []:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return texts


def test_a_provider_model_gets_a_bounded_history_from_the_fake_openai_server(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    budget = 300
    settings = make_settings(
        model="openai:gpt-4o-mini", context_budget=budget, compaction_summary_tokens=60
    )
    with LiveServer(settings) as server, server.client() as client:
        _, events = converse(client, 10, "question {i}: " + "why do logs keep order? " * 4)
    compactions = of_type(events, "HistoryCompacted")
    assert len(compactions) >= 2
    counter = counter_for("openai:gpt-4o-mini")
    for compaction in compactions:
        data = compaction["data"]
        assert_compacted_first(events, compaction)
        assert data["summary"] == FAKE_REPLY  # what the provider answered the summary request
        assert (data["model"], data["tokenizer"]) == ("openai:gpt-4o-mini", counter.name)
        assert data["tokens_before"] > budget >= data["tokens_after"]
        assert data["usage"]["requests"] == 1 and data["usage"]["input_tokens"] > 0
    bodies = fake_openai.requests
    summarizing = [
        b for b in bodies if str(b.get("instructions", "")).startswith(COMPACTION_MARKER)
    ]
    answering = [b for b in bodies if b not in summarizing]
    assert len(summarizing) == len(compactions) and len(answering) == 10
    sizes = [sum(len(text.encode()) for text in input_texts(body)) for body in answering]
    # The estimate is UTF-8 bytes / 3: the text sent stays within 3 bytes a budgeted token.
    assert max(sizes) <= 3 * budget
    whole = sum(len(e["data"]["content"].encode()) for e in message_events(events))
    assert whole > 3 * budget
    assert any(FAKE_REPLY in texts for body in answering for texts in input_texts(body))


def test_each_agent_has_its_budget_and_one_of_zero_never_compacts(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    agents_file = tmp_path / "agents.toml"
    agents_file.write_text('[[agents]]\nname = "roomy"\ncontext_budget = 0\n')
    settings = make_settings(context_budget=200, agents_file=agents_file)
    with LiveServer(settings) as server, server.client() as client:
        listed = client.get("/v1/agents").json()["items"]
        conversation_id = create_conversation(client, agent="roomy")
        for i in range(4):
            post_message(client, conversation_id, f"message {i} that goes on and on")
            events = wait_for_run_end(client, conversation_id)
            assert events[-1]["type"] == "RunCompleted"
    budgets = {agent["name"]: agent["context_budget"] for agent in listed}
    assert budgets == {"assistant": 200, "tools-demo": 200, "roomy": 0}
    assert of_type(events, "HistoryCompacted") == []


def test_erasing_the_owners_content_erases_the_summary_too(make_settings: SettingsFactory) -> None:
    settings = make_settings(context_budget=250, compaction_summary_tokens=60)
    with LiveServer(settings) as server, server.client() as client:
        conversation_id, conversed = converse(client, 4, "my secret number {i} is 4711")
        me = client.get("/v1/users/me").json()["id"]
        assert client.delete(f"/v1/users/{me}/content").status_code == 200
        events = of_type(stored_events(client, conversation_id), "HistoryCompacted")
        at = conversed[-1]["global_position"]
        rows = [m for m in messages(client, conversation_id, at) if m["role"] == "compaction"]
    assert events and len(rows) == len(events)
    for event in events:
        assert event["data"]["summary"] is None and event["erased"] == ["summary"]
    assert all(row["content"] is None and row["erased"] for row in rows)
    assert all(row["compaction"]["up_to_position"] >= 1 for row in rows)  # not content
