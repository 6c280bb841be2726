"""The live path: what a save just committed, handed straight to the watching clients.

After every save the conversation service tells its commit listeners exactly which
events it stored (`ConversationService.on_commit`). This process's followers of a
conversation get each event as one `FeedEvent`, built once (content opened once) and
shared by all of them; other processes get it once, as stored (content sealed), on
the conversation's core NATS subject `<prefix>.live.<conversation_id>`: no JetStream
acknowledgement, no store query, no relay in between. Only committed events are ever
handed on (the listener runs after the commit).

Core NATS may drop a message (a reconnect, a slow consumer, a process that died
between its commit and its publish): the feed notices the gap at the next event, or
checks the store when the live path reports a loss, and fills it from the store. The
relay stays the durable, ordered path to JetStream for consumers (docs/stream.md).
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import structlog
from eventsourcing.persistence import Recording
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from threadlog.domain.content import SEALED_FIELDS
from threadlog.domain.events import ConversationEvent
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.envelope import (
    encode_envelope,
    envelope,
    served_bytes,
    served_payload,
)
from threadlog.infra.stream.nats import (
    HEADER_POSITION,
    HEADER_TYPE,
    StreamNames,
    connect,
    event_headers,
)

log = structlog.get_logger(__name__)

# Far more than a client can fall behind by; past it the follower refills from the store.
LIVE_PENDING_LIMIT = 65536
# The latest events committed here, kept for the relay (far more than it trails by).
RECENT_COMMITS = 10_000


@dataclass(slots=True)  # not frozen: built per event served, and frozen costs per field
class FeedEvent:
    position: int
    type: str
    payload: bytes  # the event's wire JSON (EventEnvelope), content opened for the reader
    # The ids of the keys its content was opened with (`opened_with`); None: not known,
    # so never kept for later replays (infra/stream/frames.py sends a kept frame again
    # only while its keys all open).
    opened_with: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """An event this process committed, encoded once: the relay publishes the same
    bytes to JetStream (`LiveEvents.committed_at`)."""

    conversation_id: UUID
    type: str
    stored: bytes  # as on NATS: content sealed
    headers: dict[str, Any]  # the event's NATS headers: copy before changing them
    served: FeedEvent | None  # None when no follower of this process watches

    def live_headers(self) -> dict[str, Any]:
        """What the live subject's receivers read (`LiveEvents._remote`): each header
        costs nats-py a validation and two encodings per message."""
        headers = self.headers
        return {HEADER_POSITION: headers[HEADER_POSITION], HEADER_TYPE: headers[HEADER_TYPE]}


class LiveFollower:
    """One client's live events of one conversation. `lost` once some may be missing:
    the follower then reads the store (a `None` in the queue wakes it for that)."""

    def __init__(self, conversation_id: UUID) -> None:
        self.conversation_id = conversation_id
        self.queue: asyncio.Queue[FeedEvent | None] = asyncio.Queue(LIVE_PENDING_LIMIT)
        self.lost = False

    def offer(self, item: FeedEvent) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost = True  # the queue is full: the follower wakes anyway

    def mark_lost(self) -> None:
        self.lost = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def take_lost(self) -> bool:
        lost, self.lost = self.lost, False
        return lost

    def drain(self) -> list[FeedEvent]:
        """Whatever is queued now, in order (one chunk for the client)."""
        items = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                items.append(item)
        return items


class LiveEvents:
    """This process's live path: see the module docstring. It has a NATS connection of
    its own that does not echo: this process hands its own events to its followers
    directly, and would otherwise get them back from NATS."""

    def __init__(self, nc: NatsClient, names: StreamNames, keys: ContentKeys) -> None:
        self._nc = nc
        self._subject_of = names.live_subject
        self._keys = keys
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._followers: dict[UUID, set[LiveFollower]] = {}
        self._subscriptions: dict[UUID, NatsSubscription] = {}
        self._subscribing: dict[UUID, asyncio.Task[None]] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        self._recent: dict[int, Committed] = {}  # by global position; read without the lock
        self._recent_lock = threading.Lock()

    # Committed events, from whichever thread saved them.

    def committed(self, recordings: Sequence[Recording[UUID]]) -> None:
        """The commit listener: encodes each event once, then hands it on in the loop."""
        try:
            items = [self._encoded(recording) for recording in recordings]
        except Exception as error:  # the save is done; a client will refill from the store
            log.warning("live.encode_failed", error=repr(error))
            return
        self._remember(recordings, items)
        if threading.get_ident() == self._loop_thread:
            self._hand_on(items)  # the loop's own writer (PostgreSQL): no wake-up to pay for
            return
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self._loop.call_soon_threadsafe(self._hand_on, items)

    def _remember(self, recordings: Sequence[Recording[UUID]], items: list[Committed]) -> None:
        with self._recent_lock:  # saving threads write; the loop only reads
            recent = self._recent
            for recording, item in zip(recordings, items, strict=True):
                recent[recording.notification.id] = item
            while len(recent) > RECENT_COMMITS:
                del recent[next(iter(recent))]

    def committed_at(self, global_position: int) -> Committed | None:
        """The event committed here at that position, as encoded then (None: not recent,
        or not committed by this process)."""
        return self._recent.get(global_position)

    def _encoded(self, recording: Recording[UUID]) -> Committed:
        event = cast(ConversationEvent, recording.domain_event)
        item = envelope(event, recording.notification.id)
        stored = encode_envelope(item)
        watched = event.originator_id in self._followers
        served_item = None
        if watched:
            payload, key_ids = (
                served_bytes(item, self._keys) if item.type in SEALED_FIELDS else (stored, ())
            )
            served_item = FeedEvent(item.position, item.type, payload, key_ids)
        headers = event_headers(item)
        return Committed(event.originator_id, item.type, stored, headers, served_item)

    def _hand_on(self, items: list[Committed]) -> None:
        for item in items:
            followers = self._followers.get(item.conversation_id, ())
            if followers and item.served is not None:
                for follower in followers:
                    follower.offer(item.served)
            elif followers:
                # A follower arrived after the event was encoded: it reads the store.
                for follower in followers:
                    follower.mark_lost()
        task = asyncio.create_task(self._publish(items))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, items: list[Committed]) -> None:
        if not self._nc.is_connected:
            return  # other processes' followers refill from the store
        try:
            for item in items:
                await self._nc.publish(
                    self._subject_of(item.conversation_id),
                    item.stored,
                    headers=item.live_headers(),
                )
        except Exception as error:
            log.warning("live.publish_failed", error=repr(error))

    # Followers.

    async def follow(self, conversation_id: UUID) -> LiveFollower:
        """Registers a follower; events committed from now on reach it (call before
        reading the store, so that nothing falls between the two)."""
        follower = LiveFollower(conversation_id)
        followers = self._followers.setdefault(conversation_id, set())
        followers.add(follower)
        try:
            await self._subscribed(conversation_id)
        except asyncio.CancelledError:
            # The client left during the subscription's round trip: it never gets the
            # follower to leave with, so it leaves here.
            self._leave_soon(follower)
            raise
        except Exception as error:
            log.warning("live.subscribe_failed", error=repr(error))
            follower.mark_lost()
        return follower

    def following(self, conversation_id: UUID) -> int:
        """How many followers of this conversation this process has."""
        return len(self._followers.get(conversation_id, ()))

    def subscribed(self, conversation_id: UUID) -> bool:
        """Whether this process listens on the conversation's live subject."""
        return conversation_id in self._subscriptions

    async def _subscribed(self, conversation_id: UUID) -> None:
        """The conversation's subscription, made once however many followers arrive
        while it is being made."""
        if conversation_id in self._subscriptions or self._nc.is_closed:
            return
        pending = self._subscribing.get(conversation_id)
        if pending is None:
            pending = asyncio.create_task(self._subscribe(conversation_id))
            self._subscribing[conversation_id] = pending

            def done(task: asyncio.Task[None]) -> None:
                self._subscribing.pop(conversation_id, None)
                if not task.cancelled():
                    task.exception()  # each waiting follower logs it; none may be left

            pending.add_done_callback(done)
        # Shielded: the subscription outlives a cancelled first follower for the others.
        await asyncio.shield(pending)

    async def _subscribe(self, conversation_id: UUID) -> None:
        async def remote(message: Msg) -> None:
            self._remote(conversation_id, message)

        subscription = await self._nc.subscribe(
            self._subject_of(conversation_id), cb=remote, pending_msgs_limit=LIVE_PENDING_LIMIT
        )
        if not self._followers.get(conversation_id):  # every follower left meanwhile
            await subscription.unsubscribe()
            return
        self._subscriptions[conversation_id] = subscription
        # The server has the subscription once it answers a ping: only then may the
        # follower read the store, or another process's event could fall in between.
        await self._nc.flush()

    def _leave_soon(self, follower: LiveFollower) -> None:
        task = asyncio.get_running_loop().create_task(self.leave(follower))
        self._publishing.add(task)  # awaited on close like a publish
        task.add_done_callback(self._publishing.discard)

    def _remote(self, conversation_id: UUID, message: Msg) -> None:
        followers = self._followers.get(conversation_id)
        if not followers:
            return
        headers = message.headers or {}
        event_type = headers[HEADER_TYPE]
        payload, key_ids = served_payload(event_type, message.data, self._keys)
        item = FeedEvent(int(headers[HEADER_POSITION]), event_type, payload, key_ids)
        for follower in followers:
            follower.offer(item)

    async def leave(self, follower: LiveFollower) -> None:
        followers = self._followers.get(follower.conversation_id)
        if followers is None:
            return
        followers.discard(follower)
        if followers:
            return
        del self._followers[follower.conversation_id]
        subscription = self._subscriptions.pop(follower.conversation_id, None)
        if subscription is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def connection_lost(self) -> None:
        """NATS dropped or regained the connection: any follower may have missed another
        process's events meanwhile."""
        for followers in self._followers.values():
            for follower in followers:
                follower.mark_lost()

    @classmethod
    async def connect(cls, url: str, names: StreamNames, keys: ContentKeys) -> "LiveEvents":
        gaps: list[Callable[[], None]] = []

        def on_gap() -> None:
            for gap in gaps:
                gap()

        nc = await connect(url, name="threadlog-live", no_echo=True, on_gap=on_gap)
        live = cls(nc, names, keys)
        gaps.append(live.connection_lost)
        return live

    async def close(self) -> None:
        await asyncio.gather(*self._publishing, return_exceptions=True)
        if not self._nc.is_closed:
            await self._nc.close()
