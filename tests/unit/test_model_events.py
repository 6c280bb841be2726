"""A run reads its model's events under pydantic-ai's AgentStream (infra/runs/recorder.py)."""

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import AgentStreamEvent, ModelMessage
from pydantic_ai.models import StreamedResponse
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.result import AgentStream

from threadlog.infra.runs.recorder import model_events


class Answer(BaseModel):
    city: str
    population: int


async def _words(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for word in ("one", " two", " three"):
        yield word


async def _answer(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[DeltaToolCalls]:
    name = info.output_tools[0].name
    for chunk in ('{"city": "Oslo", ', '"population": 700000}'):
        yield {0: DeltaToolCall(name=name if chunk.startswith("{") else None, json_args=chunk)}


def _unused(messages: list[ModelMessage], info: AgentInfo) -> Any:
    raise AssertionError("the run streams")


async def _run(agent: Agent[None, Any], read: Any) -> tuple[list[str], Any]:
    """The run's model events (tool call ids, random per run, left out) and its output."""
    events: list[str] = []
    async with agent.iter("go") as run:
        async for node in run:
            if Agent.is_model_request_node(node):
                async with node.stream(run.ctx) as stream:
                    async for event in read(stream):
                        events.append(re.sub(r"pyd_ai_[0-9a-f]+", "<id>", repr(event)))
        assert run.result is not None
        return events, run.result.output


def _both(agent: Agent[None, Any]) -> tuple[Any, Any]:
    def public(stream: AgentStream[Any, Any]) -> AsyncIterator[AgentStreamEvent]:
        return aiter(stream)

    return asyncio.run(_run(agent, public)), asyncio.run(_run(agent, model_events))


def test_the_run_reads_the_model_stream_not_the_agent_stream() -> None:
    agent: Agent[None, str] = Agent(FunctionModel(_unused, stream_function=_words))

    async def check() -> None:
        async with agent.iter("go") as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    async with node.stream(run.ctx) as stream:
                        raw = getattr(stream, "_raw_stream_response", None)
                        assert isinstance(raw, StreamedResponse)
                        assert [e async for e in model_events(stream)]

    asyncio.run(check())


def test_text_events_and_output_are_those_of_the_agent_stream() -> None:
    agent: Agent[None, str] = Agent(FunctionModel(_unused, stream_function=_words))
    (public_events, public_output), (events, output) = _both(agent)
    assert events == public_events and len(events) > 2
    assert output == public_output == "one two three"


def test_structured_output_events_and_output_are_those_of_the_agent_stream() -> None:
    agent: Agent[None, Answer] = Agent(
        FunctionModel(_unused, stream_function=_answer), output_type=Answer
    )
    (public_events, public_output), (events, output) = _both(agent)
    assert events == public_events and len(events) > 2
    assert output == public_output == Answer(city="Oslo", population=700000)
