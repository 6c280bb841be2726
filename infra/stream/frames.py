"""Served frames: the events a replay encoded, kept so that the next replay sends them.

A client that drops off and comes back replays the conversation it just read. Stored
events never change, so their served form (`FeedEvent`: the envelope as a reader gets
it, content opened) is the same bytes every time: encoding it again costs a replay
most of its time (decoding rows, opening content, encoding envelopes: 10 to 20 µs an
event), where sending kept bytes costs next to nothing.

Opened content is the one thing that can change: an erasure closes it for good. A
kept run of frames remembers the keys its content was opened with, and is served
only while every one of them still opens (`ContentKeys.opens`, which a fresh opening
asks too, with the same caches); else it is dropped and the events are read again.

Kept per conversation as one run of consecutive positions, least recently used
dropped first once the frames take more than the limit (`THREADLOG_REPLAY_CACHE_MB`).
"""

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from threadlog.infra.store.content import ContentKeys
from threadlog.infra.stream.live import FeedEvent

# What a kept frame costs besides its payload (the FeedEvent, its list slot).
_FRAME_OVERHEAD = 120


@dataclass(slots=True)
class _Run:
    """Frames of consecutive positions, from `first`."""

    first: int
    frames: list[FeedEvent] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)
    size: int = 0

    @property
    def next(self) -> int:
        return self.first + len(self.frames)


class ServedFrames:
    def __init__(self, keys: ContentKeys, max_bytes: int) -> None:
        self._keys = keys
        self._max_bytes = max_bytes
        self._runs: OrderedDict[UUID, _Run] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # pages are encoded and served in worker threads

    def holds(self, conversation_id: UUID, position: int) -> bool:
        """Whether the frame at `position` may be kept (a lookup, nothing checked)."""
        run = self._runs.get(conversation_id)
        return run is not None and run.first <= position < run.next

    def page(
        self, conversation_id: UUID, *, after: int, up_to: int | None, limit: int
    ) -> list[FeedEvent]:
        """The kept frames after `after` (at most `limit`, none past `up_to`): empty
        when the next one is not kept, or its content's keys no longer all open. May
        query the key table: call it off the event loop."""
        with self._lock:
            run = self._runs.get(conversation_id)
            if run is None or not run.first <= after + 1 < run.next:
                return []
            key_ids = tuple(run.key_ids)
        if not all(self._keys.opens(key_id) for key_id in key_ids):
            self.drop(conversation_id)  # erased: read again, and shown erased
            return []
        with self._lock:
            if self._runs.get(conversation_id) is not run:
                return []
            self._runs.move_to_end(conversation_id)
            start = after + 1 - run.first
            end = len(run.frames) if up_to is None else min(len(run.frames), up_to + 1 - run.first)
            return run.frames[start : min(end, start + limit)]

    def keep(self, conversation_id: UUID, frames: Sequence[FeedEvent]) -> None:
        """Keeps a page just served (consecutive positions): what follows the
        conversation's run extends it, a page that does not reach it starts the run
        afresh. Frames whose keys are not known (`opened_with` None) are not kept, nor
        what follows them."""
        if not frames or self._max_bytes <= 0:
            return
        run = self._runs.get(conversation_id)
        if run is not None and run.first <= frames[0].position and frames[-1].position < run.next:
            return  # kept already (every client of a conversation offers its live pages)
        key_ids: set[str] = set()
        for index, frame in enumerate(frames):
            if frame.opened_with is None:
                frames = frames[:index]
                break
            key_ids.update(frame.opened_with)
        if not frames:
            return
        with self._lock:
            run = self._runs.get(conversation_id)
            if run is not None and run.first <= frames[0].position <= run.next:
                frames = frames[run.next - frames[0].position :]  # what it does not hold yet
            else:
                if run is not None:
                    self._size -= run.size
                run = _Run(first=frames[0].position)
                self._runs[conversation_id] = run
            if not frames:
                return
            size = sum(len(frame.payload) for frame in frames) + _FRAME_OVERHEAD * len(frames)
            run.frames.extend(frames)
            run.key_ids.update(key_ids)
            run.size += size
            self._size += size
            self._runs.move_to_end(conversation_id)
            while self._size > self._max_bytes and self._runs:
                _, dropped = self._runs.popitem(last=False)
                self._size -= dropped.size

    def drop(self, conversation_id: UUID) -> None:
        with self._lock:
            run = self._runs.pop(conversation_id, None)
            if run is not None:
                self._size -= run.size

    @property
    def size(self) -> int:
        """The bytes the kept frames take, about."""
        return self._size
