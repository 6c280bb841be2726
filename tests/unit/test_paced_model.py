"""The paced model: T tokens at R per second, each stamped with the time it was due."""

import asyncio
import itertools
import time

import pytest
from pydantic_ai import Agent

from threadlog.infra.agents.paced_model import paced_model, parse_paced, read_token
from threadlog.infra.agents.registry import AgentRegistry
from threadlog.infra.settings import Settings, SettingsError


async def _streamed(agent: Agent[None, str]) -> list[str]:
    async with agent.run_stream("Go.") as run:
        return [delta async for delta in run.stream_text(delta=True, debounce_by=None)]


def test_a_paced_model_string_gives_its_rate_and_token_count() -> None:
    assert parse_paced("paced:50:750") == (50.0, 750)
    assert parse_paced("paced:2.5:1") == (2.5, 1)


@pytest.mark.parametrize("model", ["paced:", "paced:50", "paced:0:10", "paced:50:0", "paced:x:1"])
def test_the_registry_refuses_a_malformed_paced_model(model: str) -> None:
    with pytest.raises(SettingsError, match=r"paced:<tokens per second>:<tokens>|rate must"):
        AgentRegistry.build(Settings(model=model))


def test_the_registry_runs_a_paced_model_string_with_the_paced_model() -> None:
    assistant = AgentRegistry.build(Settings(model="paced:100:3")).get("assistant")
    assert assistant is not None
    assert assistant.model_name == "paced:100:3"


def test_it_streams_every_token_in_order_each_stamped_with_its_due_time() -> None:
    before = time.time_ns()
    deltas = asyncio.run(_streamed(Agent(paced_model(200, 5))))
    after = time.time_ns()
    stamped = [read_token(delta) for delta in deltas]
    assert [token[0] for token in stamped if token] == [0, 1, 2, 3, 4]
    due = [token[1] for token in stamped if token]
    assert before <= due[0] and due[-1] <= after
    # Due times follow the schedule exactly: 1/200 s = 5 ms apart.
    assert [b - a for a, b in itertools.pairwise(due)] == [5_000_000] * 4


def test_it_waits_until_each_token_is_due() -> None:
    started = time.time_ns()
    deltas = asyncio.run(_streamed(Agent(paced_model(100, 3))))
    last = read_token(deltas[-1])
    assert last is not None
    # The third token is due 20 ms after the first; it cannot have come sooner.
    assert time.time_ns() - started >= 20_000_000


def test_text_that_is_not_a_paced_token_reads_as_none() -> None:
    assert read_token(" hello") is None
    assert read_token(" 3@12") == (3, 12)
