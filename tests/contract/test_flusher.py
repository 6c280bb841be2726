"""A run's pending events reach the store through the group-commit writer without the
run waiting for them: the same specifications on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from opentelemetry.trace import SpanContext

from tests.contract.test_store import CAUSE, run_with_tokens
from tests.contract.test_store import service as service
from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import ConversationRenamed, TokenStreamed
from threadlog.infra.runs.flusher import Flusher, FlushPolicy, FlushTick
from threadlog.infra.store.eventstore import EventLog, topics_of
from threadlog.infra.store.loop_writer import group_commit_writer
from threadlog.infra.store.writer import Events, GroupCommit, Recordings

TICK_SECONDS = 0.05
T = TypeVar("T")


class CountingWriter:
    """The store's own group-commit writer, counting the flushes handed to it."""

    def __init__(self, service: ConversationService) -> None:
        self._writer: GroupCommit = group_commit_writer(service)
        self.submitted = 0

    async def open(self) -> None:
        await self._writer.open()

    async def close(self) -> None:
        await self._writer.close()

    async def append(self, events: Events) -> Recordings:
        return await self._writer.append(events)

    def submit(
        self, events: Events, caller: SpanContext | None = None
    ) -> asyncio.Future[Recordings]:
        self.submitted += 1
        return self._writer.submit(events, caller)


@pytest.fixture
def writer(service: ConversationService) -> CountingWriter:
    return CountingWriter(service)


def run_with(writer: GroupCommit, scenario: Callable[[], Awaitable[T]]) -> T:
    """Runs `scenario` with the writer open in its event loop (PostgreSQL's writes on it)."""

    async def main() -> T:
        await writer.open()
        try:
            return await scenario()
        finally:
            await writer.close()

    return asyncio.run(main())


def token(flusher: Flusher, delta: str) -> None:
    live = flusher.conversation
    live.stream_token(run_id=live.active_run_id or "", part=0, delta=delta, cause=CAUSE)


def deltas(service: ConversationService, conversation: Conversation) -> list[str]:
    tokens = EventLog(service).read(conversation.id, topics=topics_of(TokenStreamed))
    return [t.event.delta for t in tokens]  # type: ignore[attr-defined]


async def stored_without_flushing(
    service: ConversationService, lives: list[Conversation], expected: list[str]
) -> list[list[str]]:
    """Each conversation's stored deltas once they are `expected` (or after 10 s)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        found = [await asyncio.to_thread(deltas, service, live) for live in lives]
        if all(f == expected for f in found) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.01)


def test_a_token_goes_to_the_writer_at_once_and_its_run_does_not_wait(
    service: ConversationService, writer: CountingWriter
) -> None:
    lives = [run_with_tokens(service, []) for _ in range(5)]

    async def stream() -> tuple[int, list[list[str]]]:
        tick = FlushTick(60)  # never in time: no tick is needed
        flushers = [Flusher(live, service, writer, FlushPolicy(), tick) for live in lives]
        for flusher in flushers:
            token(flusher, "a")
            await flusher.added()
        handed_over = writer.submitted  # before the loop could settle any flush
        return handed_over, await stored_without_flushing(service, lives, ["a"])

    handed_over, stored = run_with(writer, stream)
    assert handed_over == 5
    assert stored == [["a"]] * 5


def test_tokens_decided_while_a_flush_is_in_flight_go_together_when_it_lands(
    service: ConversationService, writer: CountingWriter
) -> None:
    live = run_with_tokens(service, [])

    async def stream() -> list[list[str]]:
        flusher = Flusher(live, service, writer, FlushPolicy(), FlushTick(60))
        for delta in "abc":  # no await yields: "a" is still in flight for "b" and "c"
            token(flusher, delta)
            await flusher.added()
        return await stored_without_flushing(service, [live], ["a", "b", "c"])

    assert run_with(writer, stream) == [["a", "b", "c"]]
    assert writer.submitted == 2  # "a", then "b" and "c" together


def test_a_full_batch_is_stored_before_added_returns(
    service: ConversationService, writer: CountingWriter
) -> None:
    live = run_with_tokens(service, [])

    async def stream() -> None:
        flusher = Flusher(live, service, writer, FlushPolicy(batch_size=3), FlushTick(60))
        for delta in "abcd":  # "a" in flight, then "b", "c" and "d" make a batch
            token(flusher, delta)
            await flusher.added()

    run_with(writer, stream)
    assert deltas(service, live) == ["a", "b", "c", "d"]


def test_a_flush_that_conflicts_is_redone_on_the_conversation_as_stored(
    service: ConversationService, writer: CountingWriter
) -> None:
    live = run_with_tokens(service, ["a"])

    async def stream() -> Flusher:
        flusher = Flusher(live, service, writer, FlushPolicy(), FlushTick(TICK_SECONDS))
        # Another writer appends to the conversation meanwhile: the live copy is stale.
        await asyncio.to_thread(service.rename, live.id, title="renamed", cause=CAUSE)
        token(flusher, "b")
        await flusher.added()
        await asyncio.sleep(TICK_SECONDS * 4)  # its flush conflicts, and is redone
        token(flusher, "c")
        await flusher.added()
        await flusher.flush()
        return flusher

    flusher = run_with(writer, stream)
    assert deltas(service, live) == ["a", "b", "c"]
    stored = EventLog(service).read(live.id)
    types = [type(e.event).__name__ for e in stored]
    assert types.index(ConversationRenamed.__name__) < len(types) - 2
    assert flusher.conversation.version == stored[-1].event.originator_version
