"""Stream repair: the JetStream stream compared with the store, the store being the truth.

NATS can lose acknowledged writes (Jepsen 2025, NATS 2.12, lazy fsync by default), and an
operator can delete or purge the stream. The relay (infra/stream/relay.py) asks this
module, when it starts, every `interval` seconds and after a reconnection, whether the
stream still holds what it relayed, from four cheap reads (the stream's info, its first
and its last message, and a count of stored events, kept incrementally):

- the stream is empty (recreated, purged) though events were relayed: republish them all;
- its first event is later than the store's first (purged, then appended to): purge it,
  republish them all;
- it holds fewer messages than the store holds events up to its last (a hole): purge it,
  republish them all;
- its last event is before the relay's position (a lost tail): republish after its last.

The relay republishes in global order before it relays anything newer, so the stream
stays in global order and holds each event once (docs/stream.md, "Repair"). A
republished event's `Nats-Msg-Id` is `<event id>:<tag>`: JetStream remembers the ids of
deleted and purged messages for its duplicate window and would drop the plain id.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from threadlog.domain.application import ConversationService
from threadlog.infra.store.counting import count_events, first_position
from threadlog.infra.stream.nats import (
    HEADER_GLOBAL_POSITION,
    StreamNames,
    ensure_stream,
    last_event_message,
    next_event_message,
)

log = structlog.get_logger(__name__)

RepairKind = Literal["empty", "head", "hole", "tail"]


@dataclass(frozen=True, slots=True)
class StreamContents:
    """What the stream holds: its message count and its first and last events' global
    positions (0 when empty), and its last sequence (which a purge keeps)."""

    messages: int
    last_sequence: int
    first_position: int
    last_position: int


@dataclass(frozen=True, slots=True)
class StoreContents:
    """What the store holds: its first global position (0 when empty), and how many
    events it holds up to the stream's last global position."""

    first_position: int
    events_up_to_stream_last: int


@dataclass(frozen=True, slots=True)
class Repair:
    """Republish every stored event after `resume_after`, after purging the stream
    first when `purge`; the copies' Nats-Msg-Id carry `tag`."""

    kind: RepairKind
    resume_after: int
    purge: bool
    tag: str


def plan_repair(stream: StreamContents, store: StoreContents, relayed: int) -> Repair | None:
    """What to do so that the stream holds every event up to `relayed` (the relay's
    position) once, in global order; None when it does."""
    if relayed == 0 or store.first_position == 0:
        return None  # nothing relayed yet: nothing can be missing
    tag = f"r{stream.last_sequence}"  # a purge keeps the sequence: unique per repair
    if stream.messages == 0:
        return Repair("empty", resume_after=0, purge=False, tag=tag)
    if stream.first_position > store.first_position:
        return Repair("head", resume_after=0, purge=True, tag=tag)
    if stream.messages < store.events_up_to_stream_last:
        return Repair("hole", resume_after=0, purge=True, tag=tag)
    if stream.last_position < relayed:
        return Repair("tail", resume_after=stream.last_position, purge=False, tag=tag)
    return None


def republished_id(event_id: str, tag: str) -> str:
    """The Nats-Msg-Id of an event republished by a repair."""
    return f"{event_id}:{tag}"


class StreamRepair:
    """Reads the stream and the store, and plans and prepares repairs."""

    def __init__(
        self,
        service: ConversationService,
        js: JetStreamContext,
        names: StreamNames,
        *,
        interval_seconds: float,
    ) -> None:
        self._service = service
        self._js = js
        self._names = names
        self.interval_seconds = interval_seconds
        self._next_check = 0.0
        # A server that restarted may have lost its unsynced tail: compare before the
        # next publish lands after it (a lost tail is republished, a hole rebuilds all).
        self._reconnects = self._reconnect_count()
        # Stored events never change below a committed position: counted once.
        self._counted = (0, 0)  # (up to global position, events)

    def due(self) -> bool:
        """Time for a comparison: the interval passed, or the connection came back."""
        if self._reconnect_count() != self._reconnects:
            return True
        return self.interval_seconds > 0 and time.monotonic() >= self._next_check

    def _reconnect_count(self) -> int:
        return int(self._js._nc.stats["reconnects"])

    async def check(self, relayed: int) -> Repair | None:
        """The repair the stream needs, its purge done; None when it needs none."""
        self._next_check = time.monotonic() + self.interval_seconds
        self._reconnects = self._reconnect_count()
        stream = await self.stream_contents()
        store = await asyncio.to_thread(self._store_contents, stream.last_position)
        repair = plan_repair(stream, store, relayed)
        if repair is None:
            return None
        log.warning(
            "relay.stream_repair",
            kind=repair.kind,
            stream=self._names.stream,
            messages=stream.messages,
            stream_first=stream.first_position,
            stream_last=stream.last_position,
            store_first=store.first_position,
            stored_up_to_stream_last=store.events_up_to_stream_last,
            relayed=relayed,
            republish_after=repair.resume_after,
        )
        if repair.purge:
            await self._js.purge_stream(self._names.stream)
        return repair

    async def stream_contents(self) -> StreamContents:
        name = self._names.stream
        try:
            info = await self._js.stream_info(name)
        except NotFoundError:
            await ensure_stream(self._js, self._names)  # deleted: recreated empty
            info = await self._js.stream_info(name)
        state = info.state
        if state.messages == 0:
            return StreamContents(0, state.last_seq, 0, 0)
        first = await next_event_message(self._js, self._names, state.first_seq)
        assert first is not None
        last = await last_event_message(self._js, self._names, first, state.last_seq)
        return StreamContents(
            state.messages, state.last_seq, _position_of(first.headers), _position_of(last.headers)
        )

    def _store_contents(self, stream_last: int) -> StoreContents:
        recorder = self._service.recorder
        counted_to, counted = self._counted
        if stream_last < counted_to:
            counted_to, counted = 0, 0
        counted += count_events(recorder, after=counted_to, up_to=stream_last)
        self._counted = (max(counted_to, stream_last), counted)
        return StoreContents(first_position(recorder), counted)


def _position_of(headers: dict[str, str] | None) -> int:
    return int((headers or {}).get(HEADER_GLOBAL_POSITION, "0"))
