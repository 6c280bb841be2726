"""The real provider code path (`THREADLOG_MODEL=openai:…`) against a local fake
OpenAI-compatible server: the model is the only thing faked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import SettingsFactory
from tests.fake_openai import FakeOpenAI
from tests.support import LiveServer, create_conversation, post_message, wait_for_run_end

REPLY = "Paris is the capital of France, and it sits on the Seine."


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=REPLY, token_delay=0.002) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield fake


def test_a_provider_model_string_streams_its_tokens_as_events(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    with LiveServer(make_settings(model="openai:gpt-4o-mini")) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "What is the capital of France?")
        events = wait_for_run_end(client, conversation_id)
    assert events[-1]["type"] == "RunCompleted", events[-1]
    tokens = [e["data"]["delta"] for e in events if e["type"] == "TokenStreamed"]
    assert "".join(tokens) == REPLY and len(tokens) > 5
    completed = next(e for e in events if e["type"] == "MessageCompleted")
    assert completed["data"]["content"] == REPLY
    usage = events[-1]["data"]["usage"]
    assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0 and usage["requests"] == 1
    assert fake_openai.requests and "capital of France" in repr(fake_openai.requests[-1])


def test_a_provider_dropping_the_stream_fails_the_run_safely_and_keeps_the_partial_reply(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fail_mid_stream_next(after_tokens=3)
    with LiveServer(make_settings(model="openai:gpt-4o-mini")) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hello")
        events = wait_for_run_end(client, conversation_id)
        failed = events[-1]
        assert failed["type"] == "RunFailed"
        assert failed["data"]["error"] == "model_unavailable"
        assert len([e for e in events if e["type"] == "TokenStreamed"]) == 3
        post_message(client, conversation_id, "again")
        assert wait_for_run_end(client, conversation_id)[-1]["type"] == "RunCompleted"


def test_a_provider_tool_call_is_recorded_and_its_result_goes_back_to_the_model(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.call_tool_next("calculator", {"expression": "(2 + 3) * 7"})
    settings = make_settings(model="openai-chat:gpt-4o-mini")
    with LiveServer(settings) as server, server.client() as client:
        conversation_id = create_conversation(client, agent="tools-demo")
        post_message(client, conversation_id, "What is (2 + 3) * 7?")
        events = wait_for_run_end(client, conversation_id)
    assert events[-1]["type"] == "RunCompleted", events[-1]
    started = next(e["data"] for e in events if e["type"] == "ToolCallStarted")
    completed = next(e["data"] for e in events if e["type"] == "ToolCallCompleted")
    assert started["args"] == {"expression": "(2 + 3) * 7"} and completed["result"] == 35
    tool_message = fake_openai.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and "35" in tool_message["content"]
    assert events[-1]["data"]["usage"]["requests"] == 2
