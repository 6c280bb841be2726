"""The group-commit writer: one thread that owns the run executor's saves.

Whatever is queued while a transaction is in flight goes into the next one, so
many conversations' pending events share one transaction under load and a lone
batch is written at once when idle. eventsourcing blocks; this keeps it off the
event loop.
"""

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import structlog
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Recording
from opentelemetry.trace import SpanContext

from threadlog.domain.application import ConversationService
from threadlog.infra import metrics, tracing
from threadlog.infra.store.eventstore import while_store_recovers

log = structlog.get_logger(__name__)

Events = Sequence[DomainEventProtocol[UUID]]
Recordings = list[Recording[UUID]]


class GroupCommit(Protocol):
    """What a run's flusher hands its events to (this module's, or infra/store/loop_writer.py's)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, events: Events) -> Recordings: ...

    def submit(
        self, events: Events, caller: SpanContext | None = None
    ) -> "asyncio.Future[Recordings]": ...


@dataclass(frozen=True, slots=True)
class Pending:
    events: Events
    done: "asyncio.Future[Recordings]"  # settled in its loop, a commit's all at once
    # The span that waits for this append (tracing on): the group commit links to it.
    caller: SpanContext | None = None


# A run pauses this long for an unreachable store (a PostgreSQL restart) before failing.
STORE_OUTAGE_SECONDS = 30.0


class EventWriter:
    def __init__(
        self,
        service: ConversationService,
        *,
        max_events: int = 200,
        outage_seconds: float = STORE_OUTAGE_SECONDS,
        linger_seconds: float = 0.0,
    ) -> None:
        self._service = service
        self._linger = linger_seconds
        self._max_events = max_events
        self._outage_seconds = outage_seconds
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="threadlog-writer", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join()
            self._started = False

    async def open(self) -> None:
        self.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.stop)

    async def append(self, events: Events) -> Recordings:
        """Stores the events in one transaction (maybe shared with others' events)."""
        if not events:
            return []
        return await self.submit(events, tracing.current_context())

    def submit(
        self, events: Events, caller: SpanContext | None = None
    ) -> "asyncio.Future[Recordings]":
        """`append` without awaiting: the future is settled once the events are stored.
        `caller`: the span the events were decided in (tracing on)."""
        done: asyncio.Future[Recordings] = asyncio.get_running_loop().create_future()
        self._queue.put(Pending(events, done, caller))
        return done

    def _run(self) -> None:
        stopping = False
        committed = float("-inf")
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            # Back-to-back commits (under load) wait out the rest of `linger` so that more
            # flushes join the next one; a lone flush after a quiet spell goes at once.
            rest = committed + self._linger - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            batch, count = [item], len(item.events)
            while count < self._max_events:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                count += len(more.events)
            self._commit(batch)
            committed = time.monotonic()

    def _commit(self, batch: list[Pending]) -> None:
        outcomes: list[_Outcome] = []
        self._store(batch, outcomes)
        # One wake-up of the loop for the whole commit, not one per flush.
        loops: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            loops.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, settled in loops.items():
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(settle, settled)

    def _store(self, batch: list[Pending], outcomes: "list[_Outcome]") -> None:
        try:
            events = [e for p in batch for e in p.events]
            started = time.perf_counter()
            callers = [p.caller for p in batch if p.caller is not None]
            with tracing.linked_span("store.commit", callers, events=len(events)):
                recordings = while_store_recovers(
                    lambda: self._service.append(events),
                    seconds=self._outage_seconds,
                    what="append",
                )
            count_commit(events, time.perf_counter() - started)
        except Exception as error:
            if len(batch) == 1:
                outcomes.append((batch[0].done, None, error))
                return
            # Nothing of the shared transaction was stored: retry each alone so one
            # conflicting conversation does not fail the others.
            for pending in batch:
                self._store([pending], outcomes)
            return
        outcomes.extend((pending.done, share, None) for pending, share in shares(batch, recordings))


def shares(batch: list[Pending], recordings: Recordings) -> Iterator[tuple[Pending, Recordings]]:
    """Each flush of a group commit with its own events' recordings."""
    offset = 0
    for pending in batch:
        size = len(pending.events)
        yield pending, recordings[offset : offset + size]
        offset += size


def count_commit(events: list[DomainEventProtocol[UUID]], seconds: float) -> None:
    """Metrics, once per transaction (never per event: the token path is hot)."""
    metrics.WRITER_COMMIT.observe(seconds)
    metrics.WRITER_BATCH.observe(len(events))


_Outcome = tuple["asyncio.Future[Recordings]", Recordings | None, BaseException | None]


def settle(outcomes: list[_Outcome]) -> None:
    for done, result, error in outcomes:
        # The awaiting task may have been cancelled meanwhile; its events are stored anyway.
        if done.done():
            continue
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result or [])
