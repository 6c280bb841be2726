"""Agents through real HTTP: the registry, runs bound to a conversation's agent, and
every model event a run records (tool calls, partial outputs, progress, usage, cost)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    wait_for_run_end,
)

PERSON_AGENTS = """
[[agents]]
name = "extractor"
description = "Pulls a person out of text"
model = "test"
system_prompt = "Extract the person."
price = { input_per_million = 2.0, output_per_million = 8.0 }

[agents.output_schema]
type = "object"
required = ["name", "age"]
properties = { name = { type = "string" }, age = { type = "integer" } }
"""

ToolCall = tuple[str, dict[str, Any]]


def agents_file(tmp_path: Path, text: str = PERSON_AGENTS) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return path


def _new_prompt(messages: list[ModelMessage]) -> bool:
    last = messages[-1]
    return isinstance(last, ModelRequest) and any(
        isinstance(part, UserPromptPart) for part in last.parts
    )


def _returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return [part for part in last.parts if isinstance(part, ToolReturnPart)]


def tool_calling_model(
    calls: list[ToolCall], seen: list[list[ModelMessage]] | None = None
) -> FunctionModel:
    """Makes `calls` for a new prompt; then answers with what the tools returned."""

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        if seen is not None:
            seen.append(list(messages))
        if _new_prompt(messages):
            for index, (name, args) in enumerate(calls):
                call_id = f"call-{len(seen or [])}-{index}"
                yield {index: DeltaToolCall(name, json.dumps(args), tool_call_id=call_id)}
            return
        for part in _returns(messages):
            yield f"{part.tool_name}: {part.model_response_str(wrap_if_error=False)}. "

    return FunctionModel(stream_function=stream, model_name="tool-caller")


def output_model(chunks: list[str]) -> FunctionModel:
    """Answers through the output tool, its JSON arguments streamed in `chunks`."""

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[DeltaToolCalls]:
        name = info.output_tools[0].name
        yield {0: DeltaToolCall(name, tool_call_id="out-1")}
        for chunk in chunks:
            yield {0: DeltaToolCall(json_args=chunk)}

    return FunctionModel(stream_function=stream, model_name="structured")


def run_events(client: httpx.Client, agent: str, content: str) -> tuple[str, list[dict[str, Any]]]:
    conversation_id = create_conversation(client, agent=agent)
    post_message(client, conversation_id, content)
    return conversation_id, wait_for_run_end(client, conversation_id)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event["data"] for event in events if event["type"] == kind]


def test_agents_lists_the_builtin_agents_and_the_files(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(agents_file=agents_file(tmp_path))
    with LiveServer(settings) as server, server.client() as client:
        response = client.get("/v1/agents")
    assert response.status_code == 200, response.text
    agents = {agent["name"]: agent for agent in response.json()["items"]}
    assert set(agents) == {"assistant", "tools-demo", "extractor"}
    assert agents["tools-demo"]["tools"] == ["calculator", "current_time", "report_progress"]
    extractor = agents["extractor"]
    assert (extractor["model"], extractor["output_type"]) == ("test", "structured")
    assert extractor["output_schema"]["required"] == ["name", "age"]
    assert extractor["price"] == {"input_per_million": 2.0, "output_per_million": 8.0}
    assert agents["assistant"]["output_type"] == "text"


def test_agents_are_listed_in_pages(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings()) as server, server.client() as client:
        first = client.get("/v1/agents", params={"limit": 1}).json()
        second = client.get("/v1/agents", params={"limit": 1, "cursor": first["next"]}).json()
    assert [a["name"] for a in first["items"] + second["items"]] == ["assistant", "tools-demo"]
    assert second["next"] is None


def test_starting_a_conversation_with_an_unknown_agent_is_400(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings()) as server, server.client() as client:
        response = client.post("/v1/conversations", json={"agent": "nobody"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "unknown_agent" and body["details"]["field"] == "agent"


def test_a_run_uses_its_conversations_agent_and_model(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    path = agents_file(tmp_path, '[[agents]]\nname = "tester"\nmodel = "test"\n')
    with LiveServer(make_settings(agents_file=path)) as server, server.client() as client:
        _, tester = run_events(client, "tester", "hello")
        _, assistant = run_events(client, "assistant", "hello")
    started = [of_type(events, "RunStarted")[0] for events in (tester, assistant)]
    assert [(s["agent"], s["model"]) for s in started] == [
        ("tester", "test"),
        ("assistant", "demo"),
    ]
    assert tester[-1]["type"] == assistant[-1]["type"] == "RunCompleted"
    # TestModel (model "test") answers differently from the demo model: each agent's own.
    replies = [of_type(events, "MessageCompleted")[0]["content"] for events in (tester, assistant)]
    assert "offline demo model" in replies[1] and "offline demo model" not in replies[0]


def test_a_tool_call_is_streamed_as_started_then_completed(
    make_settings: SettingsFactory,
) -> None:
    model = tool_calling_model([("calculator", {"expression": "(2 + 3) * 7"})])
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client, agent="tools-demo")
        post_message(client, conversation_id, "what is (2 + 3) * 7?")
        events = read_sse(client, f"/v1/conversations/{conversation_id}/events")
    kinds = [e.event for e in events if e.event not in ("TokenStreamed",)]
    assert kinds[-4:] == [
        "ToolCallStarted",
        "ToolCallCompleted",
        "MessageCompleted",
        "RunCompleted",
    ]
    started, completed = (e.data["data"] for e in events if e.event.startswith("ToolCall"))
    assert started["tool_name"] == "calculator" and started["args"] == {"expression": "(2 + 3) * 7"}
    assert completed["tool_call_id"] == started["tool_call_id"]
    assert (completed["result"], completed["error"]) == (35, None)


def test_a_raising_tool_records_its_error_and_the_run_completes(
    make_settings: SettingsFactory,
) -> None:
    model = tool_calling_model([("calculator", {"expression": "1 / 0"})])
    with LiveServer(make_settings(), model) as server, server.client() as client:
        _, events = run_events(client, "tools-demo", "divide one by zero")
    (completed,) = of_type(events, "ToolCallCompleted")
    assert completed["result"] is None and "division by zero" in completed["error"]
    assert events[-1]["type"] == "RunCompleted"
    reply = of_type(events, "MessageCompleted")[0]["content"]
    assert "division by zero" in reply  # the model saw the error and answered


def test_report_progress_records_run_progress(make_settings: SettingsFactory) -> None:
    model = tool_calling_model([("report_progress", {"percent": 40, "note": "reading"})])
    with LiveServer(make_settings(), model) as server, server.client() as client:
        _, events = run_events(client, "tools-demo", "work on it")
    (progress,) = of_type(events, "RunProgressReported")
    assert (progress["percent"], progress["note"]) == (40, "reading")
    kinds = [e["type"] for e in events]
    assert (
        kinds.index("ToolCallStarted")
        < kinds.index("RunProgressReported")
        < kinds.index("ToolCallCompleted")
    )


def test_progress_out_of_range_is_a_tool_error_not_a_failed_run(
    make_settings: SettingsFactory,
) -> None:
    model = tool_calling_model([("report_progress", {"percent": 140, "note": "too far"})])
    with LiveServer(make_settings(), model) as server, server.client() as client:
        _, events = run_events(client, "tools-demo", "work on it")
    assert of_type(events, "RunProgressReported") == []
    assert "between 0 and 100" in of_type(events, "ToolCallCompleted")[0]["error"]
    assert events[-1]["type"] == "RunCompleted"


def test_structured_output_records_partial_objects_then_the_final_one(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    chunks = ['{"name": "Ada', ' Lovelace", ', '"age": 3', "6}"]
    settings = make_settings(agents_file=agents_file(tmp_path))
    with LiveServer(settings, output_model(chunks)) as server, server.client() as client:
        _, events = run_events(client, "extractor", "Ada Lovelace died at 36")
    partials = [data["output"] for data in of_type(events, "OutputPartial")]
    assert partials[0] == {"name": "Ada"}
    assert {"name": "Ada Lovelace"} in partials and len(partials) >= 3
    (message,) = of_type(events, "MessageCompleted")
    assert message["output"] == {"name": "Ada Lovelace", "age": 36}
    assert json.loads(message["content"]) == message["output"]
    kinds = [e["type"] for e in events]
    assert kinds.index("MessageCompleted") > max(
        i for i, kind in enumerate(kinds) if kind == "OutputPartial"
    )


def test_a_priced_agents_run_records_usage_and_cost(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    chunks = ['{"name": "Ada", "age": 36}']
    settings = make_settings(agents_file=agents_file(tmp_path))
    with LiveServer(settings, output_model(chunks)) as server, server.client() as client:
        _, events = run_events(client, "extractor", "Ada is 36")
    completed = events[-1]["data"]
    usage = completed["usage"]
    assert usage["requests"] == 1 and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    expected = (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1_000_000
    assert completed["cost_usd"] == expected


def test_an_unpriced_agents_run_has_no_cost(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings()) as server, server.client() as client:
        _, events = run_events(client, "assistant", "hello")
    assert events[-1]["type"] == "RunCompleted" and events[-1]["data"]["cost_usd"] is None


def _dumped(messages: list[ModelMessage]) -> Any:
    return ModelMessagesTypeAdapter.dump_python(messages, mode="json")


def test_a_second_run_sees_the_first_runs_tool_calls_in_its_history_exactly(
    make_settings: SettingsFactory,
) -> None:
    seen: list[list[ModelMessage]] = []
    model = tool_calling_model([("calculator", {"expression": "6 * 7"})], seen)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id, first = run_events(client, "tools-demo", "six times seven?")
        post_message(client, conversation_id, "and again?")
        events = wait_for_run_end(client, conversation_id)
    stored = of_type(first, "MessageCompleted")[0]["model_messages"]
    first_run = ModelMessagesTypeAdapter.validate_json(stored)
    # Request, tool call, tool return, answer: the first run's history, tools included.
    assert [m.kind for m in first_run] == ["request", "response", "request", "response"]
    second_run_request = seen[2]
    assert _dumped(second_run_request[: len(first_run)]) == json.loads(stored)
    # … and exactly what the model itself saw and said during the first run.
    assert _dumped(seen[1]) == json.loads(stored)[:3]
    assert events[-1]["type"] == "RunCompleted"


def test_a_model_that_keeps_returning_invalid_output_fails_the_run_safely(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(agents_file=agents_file(tmp_path))
    garbage = output_model(['{"name": 5, "age": "old"'])
    with LiveServer(settings, garbage) as server, server.client() as client:
        _, events = run_events(client, "extractor", "who?")
    failed = events[-1]
    assert failed["type"] == "RunFailed" and failed["data"]["error"] == "model_error"
    assert of_type(events, "MessageCompleted") == []


def test_a_conversation_whose_agent_is_no_longer_defined_fails_its_run_safely(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    with_file = make_settings(agents_file=agents_file(tmp_path))
    with LiveServer(with_file) as server, server.client() as client:
        conversation_id = create_conversation(client, agent="extractor")
    with LiveServer(make_settings()) as server, server.client() as client:
        post_message(client, conversation_id, "who?")
        events = wait_for_run_end(client, conversation_id)
    failed = events[-1]
    assert failed["type"] == "RunFailed" and failed["data"]["error"] == "unknown_agent"
    assert "'extractor'" in failed["data"]["message"]
