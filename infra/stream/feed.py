"""A conversation's events from a position on: stored ones, then live ones.

The order matters: register with the live path first (infra/stream/live.py: events
committed in this process, and other processes' from the conversation's core NATS
subject), then read the store from the cursor, then follow the live events,
skipping positions already sent and filling any gap from the store. When the live
path may have lost events (a NATS reconnect, a full queue) the follower reads the
store, and it looks there anyway after a long quiet spell. Whether the client arrives
before, during or after a run, it gets every event once, in position order.

Catching up is paged: each page of stored rows is encoded in a worker thread while
the next page's rows are read, and `follow_pages` hands over a page at a time so that
a stream writes it as one chunk. Every page served, stored or live, is kept for the
next replay of the same events (infra/stream/frames.py), which then sends it as is.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

import msgspec

from threadlog.infra import metrics
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.envelope import (
    EventEnvelope,
    encode_envelope,
    opened_with,
    served_bytes,
    served_envelopes,
)
from threadlog.infra.store.eventstore import EventLog, StoredRow
from threadlog.infra.stream.frames import ServedFrames
from threadlog.infra.stream.live import FeedEvent, LiveEvents, LiveFollower

CATCH_UP_PAGE = 1000
"""Stored events per read while catching up (and per chunk a stream writes)."""
# A quiet follower still looks at the store this often: a process that died between
# its commit and its live publish leaves nothing else to notice.
STORE_CHECK_SECONDS = 60.0

__all__ = ["FeedEvent"]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


RUN_ENDINGS = frozenset({"RunCompleted", "RunFailed", "RunCancelled", "RunInterrupted"})


class _RunRef(msgspec.Struct):
    run_id: str = ""
    retry: bool = False


class _Ending(msgspec.Struct):
    data: _RunRef


_ending_decoder = msgspec.json.Decoder(_Ending)


def served_feed_event(item: EventEnvelope, keys: ContentKeys) -> FeedEvent:
    """An event's envelope as a reader gets it: content opened, encoded once."""
    return FeedEvent(item.position, item.type, *served_bytes(item, keys))


def ends_run(item: FeedEvent, run_id: str) -> bool:
    """Whether the event is the run's ending (a RunInterrupted that retries is not)."""
    if item.type not in RUN_ENDINGS:
        return False
    data = _ending_decoder.decode(item.payload).data
    return data.run_id == run_id and not data.retry


class ConversationFeed:
    def __init__(
        self,
        log: EventLog,
        live: LiveEvents,
        keys: ContentKeys,
        frames: ServedFrames | None = None,
    ) -> None:
        self._log = log
        self._keys = keys
        self._live = live
        self._frames = frames  # None: every replay reads the store

    async def follow(
        self, conversation_id: UUID, *, after: int, heartbeat_seconds: float
    ) -> AsyncGenerator[FeedEvent | Heartbeat, None]:
        pages = self.follow_pages(conversation_id, after=after, heartbeat_seconds=heartbeat_seconds)
        async with contextlib.aclosing(pages):
            async for page in pages:
                if isinstance(page, Heartbeat):
                    yield page
                    continue
                for item in page:
                    yield item

    async def follow_pages(
        self, conversation_id: UUID, *, after: int, heartbeat_seconds: float
    ) -> AsyncGenerator[Sequence[FeedEvent] | Heartbeat, None]:
        """As `follow`, but events come a page at a time: stored ones by the page, live
        ones as many as arrived together."""
        follower = await self._live.follow(conversation_id)
        try:
            last = after
            async for page in self._stored(conversation_id, after=last):
                yield page
                last = page[-1].position
            checked = time.monotonic()
            while True:
                try:
                    async with asyncio.timeout(heartbeat_seconds):
                        first = await follower.queue.get()
                except TimeoutError:
                    if follower.take_lost() or time.monotonic() - checked > STORE_CHECK_SECONDS:
                        checked = time.monotonic()
                        async for page in self._stored(conversation_id, after=last):
                            yield page
                            last = page[-1].position
                    yield Heartbeat()
                    continue
                async for live_page in self._live_pages(conversation_id, follower, first, last):
                    if self._frames is not None:
                        # What a client saw live, a client coming back replays from here.
                        self._frames.keep(conversation_id, live_page)
                    yield live_page
                    last = live_page[-1].position
        finally:
            await self._live.leave(follower)

    async def _live_pages(
        self,
        conversation_id: UUID,
        follower: LiveFollower,
        first: FeedEvent | None,
        last: int,
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        """What the follower has queued, in position order, gaps filled from the store."""
        items = [first, *follower.drain()] if first is not None else follower.drain()
        if follower.take_lost():
            async for stored in self._stored(conversation_id, after=last):
                yield stored
                last = stored[-1].position
        page: list[FeedEvent] = []
        for item in items:
            if item is None or item.position <= last:
                continue
            if item.position > last + 1:
                if page:
                    yield page
                    page = []
                async for stored in self._stored(
                    conversation_id, after=last, up_to=item.position - 1
                ):
                    yield stored
                    last = stored[-1].position
            page.append(item)
            last = item.position
        if page:
            yield page

    async def _stored(
        self, conversation_id: UUID, *, after: int, up_to: int | None = None
    ) -> AsyncIterator[list[FeedEvent]]:
        """Non-empty pages: those a replay kept as they are (infra/stream/frames.py),
        then the store's, each decoded and encoded in a worker thread. The next page's
        rows are read while this one is encoded: the query's wait for PostgreSQL holds
        no GIL, so the two overlap."""
        frames = self._frames
        while frames is not None and frames.holds(conversation_id, after + 1):
            kept = await asyncio.to_thread(
                frames.page, conversation_id, after=after, up_to=up_to, limit=CATCH_UP_PAGE
            )
            if not kept:
                break
            metrics.REPLAY_PAGES_KEPT.inc()
            yield kept
            after = kept[-1].position
        if up_to is not None and after >= up_to:
            return
        rows = await asyncio.to_thread(self._rows, conversation_id, after, up_to)
        following: asyncio.Future[Sequence[StoredRow]] | None = None
        try:
            while rows:
                if len(rows) == CATCH_UP_PAGE:
                    following = asyncio.ensure_future(
                        asyncio.to_thread(self._rows, conversation_id, rows[-1].position, up_to)
                    )
                page = await asyncio.to_thread(self._encoded_page, conversation_id, rows)
                metrics.REPLAY_PAGES_STORE.inc()
                yield page
                if following is None:
                    return
                rows, following = await following, None
        finally:
            if following is not None:
                following.cancel()

    def _rows(self, conversation_id: UUID, after: int, up_to: int | None) -> Sequence[StoredRow]:
        return self._log.read_rows(conversation_id, after=after, up_to=up_to, limit=CATCH_UP_PAGE)

    def _encoded_page(self, conversation_id: UUID, rows: Sequence[StoredRow]) -> list[FeedEvent]:
        # From the rows, no domain events built, content opened as each envelope is
        # built: the same bytes (infra/store/envelope.py).
        envelopes = served_envelopes(rows, conversation_id, self._log.mapper, self._keys)
        page = [
            FeedEvent(item.position, item.type, encode_envelope(item), opened_with(item))
            for item in envelopes
        ]
        if self._frames is not None:
            self._frames.keep(conversation_id, page)
        return page
