"""Served frames: a replay keeps the frames it encoded, and the next replay of the same
events sends them without reading the store again (infra/stream/frames.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from uuid import UUID

import pytest

from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings, SettingsError
from threadlog.infra.store.content import ContentKeys, open_content_keys
from threadlog.infra.store.eventstore import EventLog, StoredRow, open_service
from threadlog.infra.stream.feed import ConversationFeed, FeedEvent, Heartbeat
from threadlog.infra.stream.frames import ServedFrames
from threadlog.infra.stream.live import LiveEvents
from threadlog.infra.stream.nats import StreamNames

CAUSE = Cause(actor="user:test", correlation_id="served-frames")
OWNER = "owner-1"
PAGE = 1000


class CountingLog(EventLog):
    """The store's reader, counting the rows replays read from it."""

    rows_read = 0

    def read_rows(
        self,
        conversation_id: UUID,
        *,
        after: int = 0,
        up_to: int | None = None,
        limit: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[StoredRow]:
        rows = super().read_rows(
            conversation_id, after=after, up_to=up_to, limit=limit, topics=topics
        )
        self.rows_read += len(rows)
        return rows


class Replays:
    def __init__(
        self,
        service: ConversationService,
        keys: ContentKeys,
        log: CountingLog,
        feed: ConversationFeed,
    ) -> None:
        self.service, self.keys, self.log, self.feed = service, keys, log, feed

    async def replay(self, conversation_id: UUID, *, after: int = 0) -> list[FeedEvent]:
        """The events stored after `after`, as the feed's catch-up serves them."""
        pages = self.feed.follow_pages(conversation_id, after=after, heartbeat_seconds=0.2)
        events: list[FeedEvent] = []
        async with contextlib.aclosing(pages):
            async for page in pages:
                if isinstance(page, Heartbeat):
                    return events  # caught up: the feed waits for live events now
                events += page
        return events

    def conversation(self, messages: int) -> UUID:
        started = self.service.start_conversation(
            owner=OWNER, agent="demo", title="", metadata={}, cause=CAUSE
        ).value
        for index in range(messages):
            self.service.rename(started.id, title=f"title {index}", cause=CAUSE)
        self.service.post_message(
            started.id, content="hello there", client_message_id=None, model="m", cause=CAUSE
        )
        return started.id


@pytest.fixture
async def replays(tmp_path: Path, nats_url: str) -> AsyncIterator[Replays]:
    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_url)
    keys = open_content_keys(settings)
    service = open_service(settings, keys)
    live = await LiveEvents.connect(nats_url, StreamNames(prefix=f"f{tmp_path.name[-8:]}"), keys)
    service.on_commit(live.committed)
    log = CountingLog(service)
    feed = ConversationFeed(log, live, keys, ServedFrames(keys, 8 * 1024 * 1024))
    try:
        yield Replays(service, keys, log, feed)
    finally:
        await live.close()
        service.close()
        keys.close()


async def test_a_second_replay_sends_the_frames_the_first_served_without_reading_them(
    replays: Replays,
) -> None:
    conversation_id = replays.conversation(messages=PAGE + 10)  # more than a page
    first = await replays.replay(conversation_id)
    read_by_first = replays.log.rows_read
    second = await replays.replay(conversation_id)
    stored = replays.service.get_conversation(conversation_id).version
    assert read_by_first == len(first) == stored > PAGE
    assert replays.log.rows_read == read_by_first  # nothing read again
    assert [(e.position, e.payload) for e in second] == [(e.position, e.payload) for e in first]


async def test_a_replay_from_a_cursor_sends_the_kept_frames_after_it(replays: Replays) -> None:
    conversation_id = replays.conversation(messages=20)
    first = await replays.replay(conversation_id)
    read_by_first = replays.log.rows_read
    later = await replays.replay(conversation_id, after=15)
    assert [e.payload for e in later] == [e.payload for e in first[15:]]
    assert replays.log.rows_read == read_by_first


async def test_events_stored_after_the_kept_frames_are_read_from_the_store(
    replays: Replays,
) -> None:
    conversation_id = replays.conversation(messages=3)
    first = await replays.replay(conversation_id)
    read_by_first = replays.log.rows_read
    await asyncio.to_thread(replays.service.rename, conversation_id, title="new", cause=CAUSE)
    second = await replays.replay(conversation_id)
    assert [e.position for e in second] == [*(e.position for e in first), len(first) + 1]
    assert second[-1].type == "ConversationRenamed"
    assert replays.log.rows_read == read_by_first + 1


async def test_kept_frames_whose_content_key_was_erased_are_read_again_and_show_it_erased(
    replays: Replays,
) -> None:
    conversation_id = replays.conversation(messages=0)
    first = await replays.replay(conversation_id)
    replays.keys.erase(OWNER)
    second = await replays.replay(conversation_id)
    posted = [e.payload for e in first if e.type == "MessagePosted"]
    erased = [e.payload for e in second if e.type == "MessagePosted"]
    assert b'"hello there"' in posted[0]
    assert b'"hello there"' not in erased[0] and b'"erased":["content"]' in erased[0]
    assert replays.log.rows_read == 2 * len(first)


def frames(first: int, count: int, size: int = 100) -> list[FeedEvent]:
    return [
        FeedEvent(p, "ConversationRenamed", b"x" * size, opened_with=())
        for p in range(first, first + count)
    ]


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[ContentKeys]:
    keys = open_content_keys(Settings(data_dir=tmp_path / "data"))
    yield keys
    keys.close()


def test_a_page_of_kept_frames_stops_at_up_to_and_at_the_limit(keys: ContentKeys) -> None:
    kept = ServedFrames(keys, 1024 * 1024)
    conversation_id = UUID(int=1)
    kept.keep(conversation_id, frames(1, 10))
    assert [f.position for f in kept.page(conversation_id, after=2, up_to=6, limit=9)] == [
        3,
        4,
        5,
        6,
    ]
    assert [f.position for f in kept.page(conversation_id, after=0, up_to=None, limit=3)] == [
        1,
        2,
        3,
    ]
    assert kept.page(conversation_id, after=10, up_to=None, limit=9) == []


def test_a_page_that_does_not_follow_the_kept_frames_starts_them_afresh(
    keys: ContentKeys,
) -> None:
    kept = ServedFrames(keys, 1024 * 1024)
    conversation_id = UUID(int=1)
    kept.keep(conversation_id, frames(1, 5))
    kept.keep(conversation_id, frames(6, 5))  # follows: extends them
    assert len(kept.page(conversation_id, after=0, up_to=None, limit=99)) == 10
    kept.keep(conversation_id, frames(20, 5))  # a gap: starts afresh
    assert kept.page(conversation_id, after=0, up_to=None, limit=99) == []
    assert [f.position for f in kept.page(conversation_id, after=19, up_to=None, limit=99)] == [
        20,
        21,
        22,
        23,
        24,
    ]


def test_a_page_overlapping_the_kept_frames_extends_them_with_what_they_lack(
    keys: ContentKeys,
) -> None:
    kept = ServedFrames(keys, 1024 * 1024)
    conversation_id = UUID(int=1)
    kept.keep(conversation_id, frames(1, 10))
    kept.keep(conversation_id, frames(8, 6))  # 8 to 13
    positions = [f.position for f in kept.page(conversation_id, after=0, up_to=None, limit=99)]
    assert positions == list(range(1, 14))


def test_frames_whose_keys_are_not_known_are_not_kept_nor_what_follows(
    keys: ContentKeys,
) -> None:
    kept = ServedFrames(keys, 1024 * 1024)
    conversation_id = UUID(int=1)
    page = frames(1, 5)
    page[2] = FeedEvent(3, "TokenStreamed", b"{}")  # opened_with None: not known
    kept.keep(conversation_id, page)
    assert [f.position for f in kept.page(conversation_id, after=0, up_to=None, limit=99)] == [
        1,
        2,
    ]
    kept.keep(UUID(int=2), [FeedEvent(1, "TokenStreamed", b"{}")])
    assert not kept.holds(UUID(int=2), 1)


def test_the_least_recently_replayed_conversation_is_dropped_past_the_limit(
    keys: ContentKeys,
) -> None:
    kept = ServedFrames(keys, 3 * 10 * 1000)  # about three conversations of 10 frames
    conversations = [UUID(int=n) for n in range(1, 5)]
    for conversation_id in conversations[:3]:
        kept.keep(conversation_id, frames(1, 10, size=800))
    kept.page(conversations[0], after=0, up_to=None, limit=99)  # replayed again: recent
    kept.keep(conversations[3], frames(1, 10, size=800))
    held = [kept.holds(c, 1) for c in conversations]
    assert held == [True, False, True, True]
    assert kept.size <= 3 * 10 * 1000


def test_replay_cache_mb_must_not_be_negative() -> None:
    with pytest.raises(SettingsError, match="REPLAY_CACHE_MB"):
        Settings.from_env({"THREADLOG_REPLAY_CACHE_MB": "-1"})


async def test_events_a_client_saw_live_are_replayed_from_the_kept_frames(
    replays: Replays,
) -> None:
    conversation_id = replays.conversation(messages=2)
    pages = replays.feed.follow_pages(conversation_id, after=0, heartbeat_seconds=5)
    async with contextlib.aclosing(pages):
        caught_up = await anext(pages)
        await asyncio.to_thread(replays.service.rename, conversation_id, title="x", cause=CAUSE)
        live = await asyncio.wait_for(anext(pages), 5)
    read_by_first = replays.log.rows_read
    replayed = await replays.replay(conversation_id)
    assert not isinstance(caught_up, Heartbeat) and not isinstance(live, Heartbeat)
    assert [e.payload for e in replayed] == [e.payload for e in [*caught_up, *live]]
    assert replays.log.rows_read == read_by_first  # the live event was kept too
