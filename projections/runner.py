"""Runs a read model over the store's notification log, exactly once, with tracking.

eventsourcing's own `ProjectionRunner` builds a second application instance (a
second connection pool, and on SQLite a recorder that never hears this process's
writes) and commits one transaction per event. This runner follows the service's
own recorder with `subscribe(gt=checkpoint)`, like the relay, and applies events in
batches: each batch's row changes and its tracking record (upstream application
name, last notification id) commit in one transaction of the view. A crash between
an event and its checkpoint rolls both back; the next run resumes from the tracking
record, so each event is applied exactly once. The tracking table keeps one row per
upstream application and refuses to move backwards, so two runners of the same read
model cannot both commit the same batch.

Every event is read (the checkpoint then follows the store's global position, which
is what readers wait for); only the read model's topics are decoded and applied.
Others are skipped and counted, never a reason to stop.
"""

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import structlog
from eventsourcing.persistence import ApplicationRecorder, Notification, Subscription, Tracking
from eventsourcing.utils import TopicError

from threadlog.domain.application import ConversationService
from threadlog.domain.events import ConversationEvent
from threadlog.projections.lag import PROGRESS_LOG_SECONDS, LagLog
from threadlog.projections.views import Sql, View, ViewSchema

log = structlog.get_logger(__name__)

UPSTREAM = ConversationService.name
RESTART_DELAY_SECONDS = 1.0
_POLL_SECONDS = 0.1
_QUEUE_SIZE = 10_000

_Pending = queue.Queue[Notification | BaseException]


@dataclass(frozen=True, slots=True)
class Applied:
    """A decoded event and its global position (the store's notification id)."""

    event: ConversationEvent
    global_position: int


class ReadModel(ABC):
    """A read model: its tables and how a batch of events changes them."""

    name: ClassVar[str]
    schema: ClassVar[ViewSchema]
    topics: ClassVar[frozenset[str]]
    """The event topics this read model applies; the others are skipped and counted."""
    follows_activity: ClassVar[bool] = False
    """When set, `apply` also gets each conversation's latest event in the batch, of
    any known type, without every event of other topics being decoded."""

    @abstractmethod
    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        """Changes the rows for `events` (and `latest`, see `follows_activity`), inside
        the transaction that records tracking."""


Progress = Callable[[int, int], None]
"""Called after each committed batch with (events read so far, events to read)."""


class ProjectionRunner:
    """Applies one read model's events from its checkpoint on; see the module docstring."""

    def __init__(
        self,
        service: ConversationService,
        read_model: ReadModel,
        view: View,
        *,
        batch_size: int = 500,
        progress_seconds: float = PROGRESS_LOG_SECONDS,
    ) -> None:
        self.service = service
        self.read_model = read_model
        self.view = view
        self.batch_size = batch_size
        self.progress_seconds = progress_seconds
        self.name = read_model.name
        self.position = 0
        """The last committed global position, while the runner follows the log."""
        self.applied = 0
        self.skipped: Counter[str] = Counter()
        self.error: str | None = None
        self._advanced = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def checkpoint(self) -> int:
        return self.view.max_tracking_id(UPSTREAM) or 0

    def apply(self, notifications: Sequence[Notification]) -> None:
        """Applies a batch and records its last notification id, in one transaction."""
        topics = self.read_model.topics
        events: list[Applied] = []
        skipped: Counter[str] = Counter()
        for notification in notifications:
            if notification.topic in topics:
                events.append(self._decode(notification))
            else:
                skipped[notification.topic.rpartition(":")[2]] += 1
        latest = self._latest(notifications, events) if self.read_model.follows_activity else []
        last = notifications[-1].id
        with self.view.write(Tracking(UPSTREAM, last)) as sql:
            self.read_model.apply(sql, events, latest)
        self.applied += len(events)
        self.skipped.update(skipped)
        with self._advanced:
            self.position = last
            self._advanced.notify_all()

    def _decode(self, notification: Notification) -> Applied:
        event = self.service.mapper.to_domain_event(notification)
        return Applied(cast(ConversationEvent, event), notification.id)

    def _latest(
        self, notifications: Sequence[Notification], decoded: Sequence[Applied]
    ) -> list[Applied]:
        """The last event of each conversation in the batch whose type this code knows."""
        by_position = {item.global_position: item for item in decoded}
        seen: set[object] = set()
        latest: list[Applied] = []
        for notification in reversed(notifications):
            if notification.originator_id in seen:
                continue
            item = by_position.get(notification.id)
            if item is None:
                try:
                    item = self._decode(notification)
                except TopicError:
                    continue
            seen.add(notification.originator_id)
            latest.append(item)
        return latest

    def catch_up(self, *, until: int | None = None, progress: Progress | None = None) -> int:
        """Applies every stored event after the checkpoint up to `until` (default: the
        store's last one) in this thread; returns the position reached.

        The next page is read while this one is applied (one reader thread): reading
        the log is about as costly as applying it."""
        recorder = self.service.recorder
        position = self.checkpoint()
        stop = until if until is not None else (recorder.max_notification_id() or 0)
        total = max(stop - position, 0)
        first = position

        def read(start: int) -> Sequence[Notification]:
            return recorder.select_notifications(
                start=start, limit=self.batch_size, stop=stop, inclusive_of_start=False
            )

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name) as reader:
            pending = reader.submit(read, position) if position < stop else None
            while pending is not None:
                batch = pending.result()
                if not batch:
                    break
                last = batch[-1].id
                pending = reader.submit(read, last) if last < stop else None
                self.apply(batch)
                position = last
                if progress is not None:
                    progress(position - first, total)
        return position

    def rebuild(self, progress: Progress | None = None) -> int:
        """Deletes the read model's rows and tracking, then replays the whole log."""
        self.view.clear(UPSTREAM)
        self.applied = 0
        self.skipped.clear()
        return self.catch_up(progress=progress)

    # Following the log in a background thread.

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"threadlog-projection-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wait(self, position: int, timeout: float) -> bool:
        """Blocks until the read model reached `position`, or `timeout` passed."""
        if self.is_running:
            with self._advanced:
                return self._advanced.wait_for(lambda: self.position >= position, timeout)
        deadline = time.monotonic() + timeout
        while not self.view.has_tracking_id(UPSTREAM, position):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    async def wait_async(self, position: int, seconds: float) -> bool:
        """`wait` for the event loop: polls memory when running here, else the view."""
        deadline = time.monotonic() + seconds
        while True:
            if self.is_running:
                if self.position >= position:
                    return True
                delay = 0.002
            else:
                if await asyncio.to_thread(self.view.has_tracking_id, UPSTREAM, position):
                    return True
                delay = _POLL_SECONDS
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow()
            except Exception as error:
                self.error = repr(error)
                log.error(
                    "projection.failed",
                    projection=self.name,
                    error=repr(error),
                    restart_in=RESTART_DELAY_SECONDS,
                )
                self._stopping.wait(RESTART_DELAY_SECONDS)

    def _follow(self) -> None:
        start = self.checkpoint()
        with self._advanced:
            self.position = start
        log.info("projection.started", projection=self.name, checkpoint=start)
        subscription = self.service.recorder.subscribe(gt=start)
        pending: _Pending = queue.Queue(_QUEUE_SIZE)
        pump = threading.Thread(
            target=self._pump, args=(subscription, pending), name=f"{self.name}-pump", daemon=True
        )
        pump.start()
        lag = LagLog(self.name, self._store_position, self.progress_seconds)
        try:
            while not self._stopping.is_set():
                batch = self._next_batch(pending)
                if batch:
                    self.apply(batch)
                    self.error = None
                lag.observe(self.position, idle=not batch)
        finally:
            subscription.stop()
            pump.join(timeout=5)

    def _store_position(self) -> int:
        return self.service.recorder.max_notification_id() or 0

    def _pump(self, subscription: Subscription[ApplicationRecorder], pending: _Pending) -> None:
        try:
            for notification in subscription:
                self._put(pending, notification)
        except BaseException as error:
            self._put(pending, error)

    def _put(self, pending: _Pending, item: Notification | BaseException) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(queue.Full):
                pending.put(item, timeout=_POLL_SECONDS)
                return

    def _next_batch(self, pending: _Pending) -> list[Notification]:
        try:
            first = pending.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            return []
        batch = [_take(first)]
        while len(batch) < self.batch_size:
            try:
                batch.append(_take(pending.get_nowait()))
            except queue.Empty:
                break
        return batch


def _take(item: Notification | BaseException) -> Notification:
    if isinstance(item, BaseException):
        raise item
    return item
