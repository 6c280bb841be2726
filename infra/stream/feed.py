"""A conversation's events from a position on: stored ones, then live ones.

The order matters: subscribe to the conversation's NATS subject first, then read
the store from the cursor, then follow the subscription, skipping positions
already sent and filling any gap from the store. Whether the client arrives
before, during or after a run, it gets every event once, in position order.

Catching up is paged: each page of stored events is read, decoded and encoded in one
worker thread, and `follow_pages` hands over a page at a time so that a stream writes
it as one chunk. (Reading the next page while the caller sends one measured no faster:
both need the GIL.)
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.envelope import encode_envelope, envelope_of, served, served_payload
from threadlog.infra.store.eventstore import EventLog, LoggedEvent
from threadlog.infra.stream.nats import HEADER_POSITION, HEADER_TYPE, StreamNames

CATCH_UP_PAGE = 1000
"""Stored events per read while catching up (and per chunk a stream writes)."""
# Far more than a client can fall behind by; beyond it NATS drops and we refill from the store.
LIVE_PENDING_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class FeedEvent:
    position: int
    type: str
    payload: bytes  # the event's wire JSON (EventEnvelope)


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


def feed_event(logged: LoggedEvent, keys: ContentKeys) -> FeedEvent:
    """A stored event as a reader gets it: content opened (infra/store/envelope.py)."""
    item = served(envelope_of(logged), keys)
    return FeedEvent(item.position, item.type, encode_envelope(item))


def ends_run(item: FeedEvent, run_id: str) -> bool:
    """Whether the event is the run's ending (a RunInterrupted that retries is not)."""
    if item.type not in RUN_ENDINGS:
        return False
    data = _ending_decoder.decode(item.payload).data
    return data.run_id == run_id and not data.retry


class ConversationFeed:
    def __init__(
        self, log: EventLog, nc: NatsClient, names: StreamNames, keys: ContentKeys
    ) -> None:
        self._log = log
        self._keys = keys
        self._nc = nc
        self._names = names

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
        """As `follow`, but stored events come a page at a time (live ones one by one)."""
        subscription = await self._nc.subscribe(
            self._names.conversation_wildcard(conversation_id),
            pending_msgs_limit=LIVE_PENDING_LIMIT,
        )
        try:
            last = after
            async for page in self._stored(conversation_id, after=last):
                yield page
                last = page[-1].position
            while True:
                try:
                    message = await subscription.next_msg(timeout=heartbeat_seconds)
                except nats.errors.TimeoutError:
                    yield Heartbeat()
                    continue
                headers = message.headers or {}
                position = int(headers[HEADER_POSITION])
                if position <= last:
                    continue
                if position > last + 1:
                    async for page in self._stored(conversation_id, after=last, up_to=position - 1):
                        yield page
                        last = page[-1].position
                event_type = headers[HEADER_TYPE]
                payload = served_payload(event_type, message.data, self._keys)
                yield (FeedEvent(position, event_type, payload),)
                last = position
        finally:
            if not self._nc.is_closed:
                await subscription.unsubscribe()

    async def _stored(
        self, conversation_id: UUID, *, after: int, up_to: int | None = None
    ) -> AsyncIterator[list[FeedEvent]]:
        """Non-empty pages, each read, decoded and encoded in a worker thread."""
        while True:
            page = await asyncio.to_thread(self._encoded_page, conversation_id, after, up_to)
            if page:
                yield page
                after = page[-1].position
            if len(page) < CATCH_UP_PAGE:
                return

    def _encoded_page(
        self, conversation_id: UUID, after: int, up_to: int | None
    ) -> list[FeedEvent]:
        page = self._log.read(conversation_id, after=after, up_to=up_to, limit=CATCH_UP_PAGE)
        return [feed_event(logged, self._keys) for logged in page]
