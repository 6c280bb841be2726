"""The real pydantic-ai OpenAI provider path against `tests.fake_openai.FakeOpenAI`.

Error tests build the provider on an `openai.AsyncOpenAI(max_retries=0)` client: the SDK
retries 5xx with a 0.5s+ backoff by default and `fail_next` is one-shot, so with default
retries a 500 would be absorbed by the retry instead of reaching the agent (pinned down by
`test_default_sdk_retries_absorb_one_shot_500`). Keeping status 500 tests the error mapping
for the status we care about in production, which a non-retried 400 would not.

`Agent("openai:...")` resolves to the Responses API (`/v1/responses`) in pydantic-ai 2.x, not
to chat completions; `openai-chat:...` is the chat-completions model string.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelConnectionError, ModelHTTPError
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
from pydantic_ai.models import Model
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.run import AgentRunResult, AgentRunResultEvent

from tests.fake_openai import CHAT_COMPLETIONS_PATH, RESPONSES_PATH, FakeOpenAI, split_tokens

REPLY = "The quick brown fox jumps over the lazy dog."


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=REPLY) as server:
        yield server


@pytest.fixture
async def no_retry_client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    # Closed explicitly: a client garbage-collected after its event loop closed logs
    # "Event loop is closed" errors from its connection pool.
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0) as client:
        yield client


def _chat_agent(fake: FakeOpenAI) -> Agent[None, str]:
    provider = OpenAIProvider(base_url=fake.base_url, api_key="test")
    return Agent(OpenAIChatModel("gpt-4o-mini", provider=provider))


def _no_retry_agent(client: openai.AsyncOpenAI, *, responses: bool = False) -> Agent[None, str]:
    provider = OpenAIProvider(openai_client=client)
    model: Model = (
        OpenAIResponsesModel("gpt-4o-mini", provider=provider)
        if responses
        else OpenAIChatModel("gpt-4o-mini", provider=provider)
    )
    return Agent(model)


async def _stream_text(agent: Agent[None, str], texts: list[str]) -> AgentRunResult[str]:
    """Run `agent` on "hi", appending each text fragment to `texts` as it arrives."""
    result: AgentRunResult[str] | None = None
    async with agent.run_stream_events("hi") as events:
        async for ev in events:
            if isinstance(ev, PartStartEvent) and isinstance(ev.part, TextPart):
                texts.append(ev.part.content)
            elif isinstance(ev, PartDeltaEvent) and isinstance(ev.delta, TextPartDelta):
                texts.append(ev.delta.content_delta)
            elif isinstance(ev, AgentRunResultEvent):
                result = ev.result
    assert result is not None
    return result


async def test_streams_reply_and_usage(fake: FakeOpenAI) -> None:
    texts: list[str] = []
    result = await _stream_text(_chat_agent(fake), texts)

    assert "".join(texts) == REPLY
    assert len(texts) == len(split_tokens(REPLY))
    assert result.output == REPLY
    assert fake.request_paths == [CHAT_COMPLETIONS_PATH]
    body = fake.requests[0]
    assert body["stream"] is True
    assert body["model"] == "gpt-4o-mini"
    assert body["stream_options"] == {"include_usage": True}
    usage = result.usage
    assert usage.requests == 1
    assert usage.input_tokens == 1  # "hi"
    assert usage.output_tokens == len(split_tokens(REPLY))


async def test_set_reply_and_non_streaming_run(fake: FakeOpenAI) -> None:
    fake.set_reply("Something else entirely.")
    result = await _chat_agent(fake).run("count these four words")

    assert result.output == "Something else entirely."
    assert fake.requests[0].get("stream") is not True
    assert result.usage.input_tokens == 4
    assert result.usage.output_tokens == 3


async def test_fail_next_raises_model_http_error(
    fake: FakeOpenAI, no_retry_client: openai.AsyncOpenAI
) -> None:
    fake.fail_next(500, "upstream exploded")
    texts: list[str] = []
    with pytest.raises(ModelHTTPError) as exc_info:
        await _stream_text(_no_retry_agent(no_retry_client), texts)

    assert exc_info.value.status_code == 500
    assert "upstream exploded" in str(exc_info.value)
    assert texts == []
    assert len(fake.requests) == 1

    # One-shot: the next run succeeds.
    assert (await _no_retry_agent(no_retry_client).run("hi")).output == REPLY


async def test_default_sdk_retries_absorb_one_shot_500(fake: FakeOpenAI) -> None:
    fake.fail_next(500)
    result = await _chat_agent(fake).run("hi")

    assert result.output == REPLY
    assert len(fake.requests) == 2


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
async def test_fail_mid_stream_raises_after_tokens(
    fake: FakeOpenAI, no_retry_client: openai.AsyncOpenAI, responses: bool
) -> None:
    fake.fail_mid_stream_next(after_tokens=2)
    texts: list[str] = []
    # The truncated chunked body surfaces as h11's RemoteProtocolError, wrapped by the SDK in
    # openai.APIConnectionError and by pydantic-ai in ModelConnectionError (not ModelHTTPError).
    with pytest.raises(ModelConnectionError) as exc_info:
        await _stream_text(_no_retry_agent(no_retry_client, responses=responses), texts)

    assert isinstance(exc_info.value.__cause__, openai.APIConnectionError)
    assert texts == split_tokens(REPLY)[:2]
    assert len(fake.requests) == 1


async def test_model_string_uses_env(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    texts: list[str] = []
    result = await _stream_text(Agent("openai:gpt-4o-mini"), texts)

    assert "".join(texts) == REPLY
    assert result.output == REPLY
    assert fake.request_paths == [RESPONSES_PATH]
    assert result.usage.input_tokens == 1
    assert result.usage.output_tokens == len(split_tokens(REPLY))


async def test_chat_model_string_uses_env(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    texts: list[str] = []
    result = await _stream_text(Agent("openai-chat:gpt-4o-mini"), texts)

    assert "".join(texts) == REPLY
    assert fake.request_paths == [CHAT_COMPLETIONS_PATH]
    assert result.usage.output_tokens == len(split_tokens(REPLY))


async def test_responses_non_streaming(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    result = await Agent("openai:gpt-4o-mini").run("count these four words")

    assert result.output == REPLY
    assert fake.request_paths == [RESPONSES_PATH]
    assert result.usage.input_tokens == 4
