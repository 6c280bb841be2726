"""A run's live aggregate and its pending events on their way to the store.

A run hands its new events to the group-commit writer at once, without awaiting them,
unless an earlier flush of the run is still in flight: then they wait for it, and go
together when it lands. So a lone token goes to the store in the same turn of the
event loop that decided it, and under load a run's tokens gather behind its commit in
flight (and the writer's linger spaces its commits: infra/store/writer.py). A run
awaits its flush only when it has `batch_size` events pending, or ends.

Until 2026-12-01 every token waited for the process's next tick (`interval_seconds`,
5 ms): at one stream of 50 tokens/s, a timer wake-up of its own per token and 5 ms of
its latency. The tick (`FlushTick`, one timer for every run of the process) now only
retries a run whose flush was busy (its lock held, or a conflict being redone).
"""

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from eventsourcing.persistence import IntegrityError

from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.errors import RunNotActive
from threadlog.domain.events import ConversationEvent
from threadlog.infra import tracing
from threadlog.infra.store.writer import GroupCommit, Recordings

REBASE_ATTEMPTS = 3


@dataclass(frozen=True, kw_only=True)
class FlushPolicy:
    batch_size: int = 64
    interval_seconds: float = 0.005


class FlushTick:
    """The process's one timer for pending events: every `interval` while some are due."""

    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._due: dict[Flusher, None] = {}  # insertion-ordered: the first due go first
        self._timer: asyncio.TimerHandle | None = None

    def due(self, flusher: "Flusher") -> None:
        self._due[flusher] = None
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        due, self._due = self._due, {}
        for flusher in due:
            if not flusher.flush_soon():
                self._due[flusher] = None  # busy with a flush: the next tick
        if self._due:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)


class Flusher:
    """Appends a live aggregate's pending events: by count, or on the process's tick.

    When another writer appended to the conversation first (a queued message, say),
    the append conflicts: the flusher reloads the aggregate, redoes the events it had
    decided on top, and carries on with the fresh copy as `conversation`.
    """

    def __init__(
        self,
        conversation: Conversation,
        service: ConversationService,
        writer: GroupCommit,
        policy: FlushPolicy,
        tick: FlushTick,
    ):
        self.conversation = conversation
        # The attempt this flusher writes for: a retry elsewhere (a worker that lost its
        # lease while alive) supersedes it, and its events must not land in the retry.
        self._attempt = (conversation.active_run_id, conversation.active_attempt)
        self._service = service
        self._writer = writer
        self._policy = policy
        self._tick = tick
        self._lock = asyncio.Lock()
        self._in_flight: asyncio.Future[Recordings] | None = None  # the tick's, unawaited
        self._conflicted: list[ConversationEvent] = []  # the tick's, refused: to rebase
        self._background: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        # The run's span (tracing on): the tick's flushes, outside it, link to it.
        self._trace = tracing.current_context()

    async def added(self) -> None:
        if self._error is not None:
            raise self._error
        if len(self.conversation.pending_events) >= self._policy.batch_size:
            await self.flush()
        elif self._in_flight is None and not self.flush_soon():
            self._tick.due(self)

    def flush_soon(self) -> bool:
        """Hands the pending events to the writer without awaiting them (False: busy)."""
        if self._lock.locked() or self._in_flight is not None or self._conflicted:
            return False
        events = self.conversation.collect_events()
        if events:
            flushed = self._writer.submit(events, self._trace)
            self._in_flight = flushed
            flushed.add_done_callback(functools.partial(self._landed, events))
        return True

    def _landed(self, events: Sequence[object], flushed: "asyncio.Future[Recordings]") -> None:
        self._in_flight = None
        if flushed.cancelled():
            return
        error = flushed.exception()
        if isinstance(error, IntegrityError):
            self._conflicted = list(cast(Sequence[ConversationEvent], events))
            task = asyncio.create_task(self._flush_noting_error())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif error is not None:
            self._error = error
        elif self.conversation.pending_events and not self.flush_soon():
            self._tick.due(self)  # decided while this flush was in flight

    async def _flush_noting_error(self) -> None:
        try:
            await self.flush()
        except Exception as error:
            self._error = error

    async def flush(self) -> None:
        """Stores everything decided so far (after what the tick has in flight)."""
        async with self._lock:
            while self._in_flight is not None:
                await asyncio.wait({self._in_flight})  # `_landed` runs first
            if self._error is not None:
                raise self._error
            conflicted, self._conflicted = self._conflicted, []
            events = conflicted + cast(list[ConversationEvent], self.conversation.collect_events())
            if not events:
                return
            if conflicted:
                await self._rebase(events)
                return
            try:
                with tracing.span("run.flush", events=len(events)):
                    await self._writer.append(events)
            except IntegrityError:
                await self._rebase(events)

    async def _rebase(self, decided: Sequence[ConversationEvent]) -> None:
        for attempt in range(REBASE_ATTEMPTS):
            fresh = await asyncio.to_thread(self._service.get_conversation, self.conversation.id)
            run_id, run_attempt = self._attempt
            if fresh.active_run_id == run_id and fresh.active_attempt != run_attempt:
                raise RunNotActive(run_id or "")
            for event in decided:
                fresh.redo(event)
            redone = fresh.collect_events()
            try:
                await self._writer.append(redone)
            except IntegrityError:
                if attempt == REBASE_ATTEMPTS - 1:
                    raise
                continue
            # Events decided on the stale copy meanwhile move over too.
            for late in self.conversation.collect_events():
                fresh.redo(cast(ConversationEvent, late))
            self.conversation = fresh
            return
