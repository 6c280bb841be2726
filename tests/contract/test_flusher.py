"""A run's pending events reach the store on the process's one flush tick: the same
specifications on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.trace import SpanContext

from tests.contract.test_store import CAUSE, run_with_tokens
from tests.contract.test_store import service as service
from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import ConversationRenamed, TokenStreamed
from threadlog.infra.runs.flusher import Flusher, FlushPolicy, FlushTick
from threadlog.infra.store.eventstore import EventLog, topics_of
from threadlog.infra.store.writer import Events, EventWriter, Recordings

TICK_SECONDS = 0.05


class CountingWriter(EventWriter):
    """Counts the flushes handed to it."""

    submitted = 0

    def submit(
        self, events: Events, caller: SpanContext | None = None
    ) -> asyncio.Future[Recordings]:
        self.submitted += 1
        return super().submit(events, caller)


@pytest.fixture
def writer(service: ConversationService) -> Iterator[CountingWriter]:
    writer = CountingWriter(service)
    writer.start()
    yield writer
    writer.stop()


def token(flusher: Flusher, delta: str) -> None:
    live = flusher.conversation
    live.stream_token(run_id=live.active_run_id or "", part=0, delta=delta, cause=CAUSE)


def deltas(service: ConversationService, conversation: Conversation) -> list[str]:
    tokens = EventLog(service).read(conversation.id, topics=topics_of(TokenStreamed))
    return [t.event.delta for t in tokens]  # type: ignore[attr-defined]


def test_many_runs_tokens_are_stored_on_one_tick_without_the_runs_waiting(
    service: ConversationService, writer: CountingWriter
) -> None:
    lives = [run_with_tokens(service, []) for _ in range(5)]

    async def stream() -> list[int]:
        tick = FlushTick(TICK_SECONDS)
        flushers = [Flusher(live, service, writer, FlushPolicy(), tick) for live in lives]
        for flusher in flushers:
            token(flusher, "a")
            await flusher.added()
        pending = [len(f.conversation.pending_events) for f in flushers]
        await asyncio.sleep(TICK_SECONDS * 4)
        for flusher in flushers:
            await flusher.flush()
        return pending

    pending = asyncio.run(stream())
    assert pending == [1] * 5  # `added` returned before any flush
    assert writer.submitted == 5  # one flush each, on the tick
    assert [deltas(service, live) for live in lives] == [["a"]] * 5


def test_a_full_batch_is_stored_before_added_returns(
    service: ConversationService, writer: CountingWriter
) -> None:
    live = run_with_tokens(service, [])

    async def stream() -> None:
        flusher = Flusher(live, service, writer, FlushPolicy(batch_size=3), FlushTick(60))
        for delta in "abc":
            token(flusher, delta)
            await flusher.added()

    asyncio.run(stream())
    assert deltas(service, live) == ["a", "b", "c"]


def test_a_tick_flush_that_conflicts_is_redone_on_the_conversation_as_stored(
    service: ConversationService, writer: CountingWriter
) -> None:
    live = run_with_tokens(service, ["a"])

    async def stream() -> Flusher:
        flusher = Flusher(live, service, writer, FlushPolicy(), FlushTick(TICK_SECONDS))
        # Another writer appends to the conversation meanwhile: the live copy is stale.
        await asyncio.to_thread(service.rename, live.id, title="renamed", cause=CAUSE)
        token(flusher, "b")
        await flusher.added()
        await asyncio.sleep(TICK_SECONDS * 4)  # the tick's flush conflicts, and is redone
        token(flusher, "c")
        await flusher.added()
        await flusher.flush()
        return flusher

    flusher = asyncio.run(stream())
    assert deltas(service, live) == ["a", "b", "c"]
    stored = EventLog(service).read(live.id)
    types = [type(e.event).__name__ for e in stored]
    assert types.index(ConversationRenamed.__name__) < len(types) - 2
    assert flusher.conversation.version == stored[-1].event.originator_version
