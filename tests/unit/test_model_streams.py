"""A model's streamed events reach the run without a turn of the event loop each."""

import subprocess
import sys

PROBE = """
import asyncio
from pydantic_ai._utils import PeekableAsyncStream
from threadlog.infra.agents.streams import pull_without_yielding

EVENTS = 100


async def turns_while_pulling() -> int:
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def events():
        for index in range(EVENTS):
            yield index

    counter = asyncio.create_task(count())
    await asyncio.sleep(0)
    start = turns
    pulled = [event async for event in PeekableAsyncStream(events())]
    counted = turns - start
    counter.cancel()
    assert pulled == list(range(EVENTS))
    return counted


before = asyncio.run(turns_while_pulling())
pull_without_yielding()
after = asyncio.run(turns_while_pulling())
print(before, after)
"""


def test_pulling_a_model_stream_does_not_yield_to_the_loop_per_event() -> None:
    # A process of its own: the change is to pydantic-ai's class, for the process.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before >= 100  # pydantic-ai's own stream: a turn of the loop per event
    assert after <= 2
