"""Runs a read model over the store's notification log, exactly once, with tracking.

eventsourcing's own `ProjectionRunner` builds a second application instance (a
second connection pool, and on SQLite a recorder that never hears this process's
writes) and commits one transaction per event. This runner follows the service's
own recorder and applies events in batches: each batch's row changes and its
tracking record (upstream application name, last notification id) commit in one
transaction of the view. A crash between an event and its checkpoint rolls both
back; the next run resumes from the tracking record, so each event is applied
exactly once. The tracking table keeps one row per upstream application and refuses
to move backwards, so two runners of the same read model cannot both commit the
same batch.

Every event is read (the checkpoint then follows the store's global position, which
is what readers wait for); only the read model's topics are decoded and applied.
Others are skipped and counted, never a reason to stop.

A running runner is fed batches: by the process's one follower of the log (a
`LogSource`, infra/store/follower.py, wired by the composition root), or, standalone,
by a subscription of its own. A batch with nothing for this read model costs no
transaction: the position advances in memory (what readers in this process wait for)
and the tracking record follows at most every TRACKING_SECONDS, alone in its
transaction. A restart resumes from the tracking record and skips those events again.
Such a batch, when the runner waits idle for the next, is handled in the source's
thread as it arrives: the runner's thread is not woken (at one stream of tokens, five
runners woke on every batch, all at once on the GIL).
A read model that `follows_activity` defers batches of other topics the same way (only
each conversation's latest event is kept), and applies them at once when a reader waits
for a position among them.
"""

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, cast

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
_FIRST_POLL_SECONDS = 0.005
# An idle runner wakes this often (to write a tracking record behind skipped events); a
# batch, a waiting reader or `stop` wake it at once. Four runners at 0.1 s were the
# largest part of an idle server's CPU.
_IDLE_WAIT_SECONDS = 0.5
_QUEUE_SIZE = 10_000
TRACKING_SECONDS = 1.0
"""How long the tracking record may stay behind the position over skipped events."""
_INBOX_BATCHES = 100  # batches queued at most; older ones are dropped and read again


class LogBatch(Protocol):
    """Every notification with an id in (after, up_to], in order."""

    @property
    def after(self) -> int: ...

    @property
    def up_to(self) -> int: ...

    @property
    def notifications(self) -> Sequence[Notification]: ...


@dataclass(frozen=True, slots=True)
class Batch:
    """Every notification with an id in (after, up_to], in order (a `LogBatch`)."""

    after: int
    up_to: int
    notifications: Sequence[Notification]


class LogSource(Protocol):
    """Follows the log for several consumers (infra/store/follower.py's `Follower`)."""

    def add(self, consumer: Callable[[LogBatch], None]) -> Callable[[], None]:
        """Hands each later batch to `consumer` (in the source's thread); returns a remover."""
        ...

    def nudge(self) -> None:
        """Reads the log at once: someone waits for a position."""
        ...


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
        """The last global position handled, while the runner follows the log."""
        self.applied = 0
        self.skipped: Counter[str] = Counter()
        self.error: str | None = None
        self._advanced = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: LogSource | None = None
        self._inbox: deque[LogBatch] = deque()
        self._arrived = threading.Condition()
        self._handled = 0  # every event up to here was applied, skipped or deferred
        self._tracked = 0  # the position the tracking record holds
        self._untracked_since: float | None = None
        self._deferred: dict[object, Notification] = {}  # activity only, per conversation
        self._wanted = 0  # the highest position a reader waits for
        self._waiting = False  # the runner's thread waits for batches (holding no state)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def waiting(self) -> bool:
        """Its thread waits for batches (has handled every one it was given)."""
        return self._waiting

    def checkpoint(self) -> int:
        return self.view.max_tracking_id(UPSTREAM) or 0

    def apply(self, notifications: Sequence[Notification], *, up_to: int | None = None) -> None:
        """Applies a batch and records its last notification id (or `up_to`, the end of
        the range the batch covers), in one transaction."""
        topics = self.read_model.topics
        events: list[Applied] = []
        skipped: Counter[str] = Counter()
        # Activity deferred from earlier batches comes first: the latest of each wins.
        notifications = [*self._deferred.values(), *notifications]
        for notification in notifications:
            if notification.topic in topics:
                events.append(self._decode(notification))
            else:
                skipped[_type_of(notification)] += 1
        latest = self._latest(notifications, events) if self.read_model.follows_activity else []
        last = notifications[-1].id if up_to is None else up_to
        with self.view.write(Tracking(UPSTREAM, last)) as sql:
            self.read_model.apply(sql, events, latest)
        self.applied += len(events)
        self.skipped.update(skipped)
        self._deferred.clear()
        self._handled = max(self._handled, last)
        self._tracked = last
        self._untracked_since = None
        self._advance(last)

    def _advance(self, position: int) -> None:
        with self._advanced:
            self.position = position
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
        store's last one) in this thread; returns the position reached."""
        return self._replay(self.checkpoint(), until, self.apply, progress)

    def _replay(
        self,
        position: int,
        until: int | None,
        handle: Callable[[Sequence[Notification]], None],
        progress: Progress | None = None,
    ) -> int:
        """Hands the stored events in (position, until] to `handle`, page by page.

        The next page is read while this one is handled (one reader thread): reading
        the log is about as costly as applying it."""
        recorder = self.service.recorder
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
                handle(batch)
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

    def start(self, source: LogSource | None = None) -> None:
        """Follows the log: fed by `source` when given, else by a subscription of its own."""
        self._stopping.clear()
        self._source = source
        self._thread = threading.Thread(
            target=self._run, name=f"threadlog-projection-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._arrived:
            self._arrived.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def receive(self, batch: LogBatch) -> None:
        """Queues a batch read by the source (called in its thread, must not block).

        A batch with nothing for this read model, right after what the runner handled
        while it waits idle, is handled here: it needs no view, only the position in
        memory (or the activity deferred), and the runner's thread is not woken for it
        (one wake-up per read model per batch of tokens, all at once on the GIL)."""
        with self._arrived:
            if self._waiting and not self._inbox and self._needs_no_view(batch):
                self._consume(batch)  # the runner's thread waits for this lock meanwhile
                return
            if len(self._inbox) >= _INBOX_BATCHES:
                self._inbox.popleft()  # its events are read again from the store
            self._inbox.append(batch)
            self._arrived.notify()

    def _needs_no_view(self, batch: LogBatch) -> bool:
        """No gap to read before `batch`, and none of its new events of this model's topics."""
        handled, topics = self._handled, self.read_model.topics
        return batch.after <= handled and not any(
            n.topic in topics for n in batch.notifications if n.id > handled
        )

    def wait(self, position: int, timeout: float) -> bool:
        """Blocks until the read model reached `position`, or `timeout` passed."""
        if self.is_running:
            self._nudge(position)
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
        if self.is_running:
            self._nudge(position)
        delay = 0.0
        while True:
            if self.is_running:
                if self.position >= position:
                    return True
                delay = 0.002
            else:
                if await asyncio.to_thread(self.view.has_tracking_id, UPSTREAM, position):
                    return True
                # Run by another process (`threadlog serve`'s background process): it
                # most likely gets there within its follower's interval, so look early,
                # then less and less often.
                delay = min(delay * 2, _POLL_SECONDS) if delay else _FIRST_POLL_SECONDS
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)

    def _nudge(self, position: int) -> None:
        """A reader waits: the source reads now instead of after its interval, and
        activity the runner deferred up to `position` is applied at once."""
        if self.position >= position:
            return
        with self._arrived:
            self._wanted = max(self._wanted, position)
            self._arrived.notify()
        if self._source is not None:
            self._source.nudge()

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
        self._handled = self._tracked = start
        self._untracked_since = None
        self._deferred.clear()
        self._advance(start)
        log.info("projection.started", projection=self.name, checkpoint=start)
        if self._source is None:
            feeding: contextlib.AbstractContextManager[object] = self._subscribed(start)
        else:
            feeding = self._fed(self._source)
        lag = LagLog(self.name, self._store_position, self.progress_seconds)
        with feeding:
            observed = self.position
            try:
                while not self._stopping.is_set():
                    batches = self._take()
                    for batch in batches:
                        self._consume(batch)
                        self.error = None
                        lag.observe(self.position, idle=False)
                    self._settle(force=False)
                    if not batches:
                        # Batches `receive` handled meanwhile (the position moved) were work:
                        # only a runner that saw none is idle (LagLog then asks the store).
                        lag.observe(self.position, idle=self.position == observed)
                        if self._source is None:
                            # eventsourcing's subscription LISTENs in a thread of its own,
                            # after its first read: a commit in between would wait for the
                            # next one. An idle standalone runner looks for itself.
                            self._replay(self._handled, None, self._handle)
                    observed = self.position
            finally:
                with contextlib.suppress(Exception):
                    self._settle(force=True)

    @contextlib.contextmanager
    def _fed(self, source: LogSource) -> Iterator[None]:
        with self._arrived:
            self._inbox.clear()
        remove = source.add(self.receive)
        try:
            # What was committed before the source's first batch, read here.
            self._replay(self._handled, None, self._handle)
            yield
        finally:
            remove()

    @contextlib.contextmanager
    def _subscribed(self, start: int) -> Iterator[None]:
        """Standalone: a subscription of this runner's own feeds the inbox."""
        with self._arrived:
            self._inbox.clear()
        subscription = self.service.recorder.subscribe(gt=start)
        pump = threading.Thread(
            target=self._pump, args=(subscription, start), name=f"{self.name}-pump", daemon=True
        )
        pump.start()
        try:
            yield
        finally:
            subscription.stop()
            pump.join(timeout=5)

    def _take(self) -> list[LogBatch]:
        """The queued batches, merged where they follow each other; [] after a quiet while."""
        with self._arrived:
            if not self._inbox:
                self._waiting = True  # `receive` may handle batches meanwhile
                try:
                    self._arrived.wait(_IDLE_WAIT_SECONDS)
                finally:
                    self._waiting = False
            batches = list(self._inbox)
            self._inbox.clear()
        if batches and isinstance(batches[-1], _Failure):
            raise batches[-1].error
        return merge_batches(batches, self.batch_size)

    def _consume(self, batch: LogBatch) -> None:
        """Handles what of `batch` is new here, after reading any gap before it."""
        if batch.up_to <= self._handled:
            return
        if batch.after > self._handled:
            self._replay(self._handled, batch.after, self._handle)
        fresh = [n for n in batch.notifications if n.id > self._handled]
        self._handle(fresh, batch.up_to)

    def _handle(self, notifications: Sequence[Notification], up_to: int | None = None) -> None:
        """Applies the events if any is of this read model's topics. Otherwise nothing
        changes (the position moves on in memory), or, for a read model that follows
        activity, the activity is deferred: both reach the view within TRACKING_SECONDS,
        or as soon as a reader waits for them."""
        if not notifications:
            return
        last = notifications[-1].id if up_to is None else up_to
        topics = self.read_model.topics
        if any(n.topic in topics for n in notifications):
            self.apply(notifications, up_to=last)
            return
        if self._untracked_since is None:
            self._untracked_since = time.monotonic()
        self._handled = last
        if self.read_model.follows_activity:
            for notification in notifications:
                self._deferred.pop(notification.originator_id, None)
                self._deferred[notification.originator_id] = notification
            return
        self.skipped.update(_type_of(n) for n in notifications)
        self._advance(last)

    def _settle(self, *, force: bool) -> None:
        """Writes what was deferred or skipped since the last transaction (deferred
        activity and the tracking record together) when it is due or a reader waits."""
        since = self._untracked_since
        if since is None or self._handled <= self._tracked:
            return
        wanted = bool(self._deferred) and self._wanted > self.position
        if not (force or wanted or time.monotonic() - since >= TRACKING_SECONDS):
            return
        if self._deferred:
            self.apply([], up_to=self._handled)
            return
        position = self._handled
        with self.view.write(Tracking(UPSTREAM, position)):
            pass
        self._tracked = position
        self._untracked_since = None

    def _store_position(self) -> int:
        return self.service.recorder.max_notification_id() or 0

    def _pump(self, subscription: Subscription[ApplicationRecorder], start: int) -> None:
        after = start
        try:
            for notification in subscription:
                self._put(Batch(after, notification.id, (notification,)))
                after = notification.id
        except BaseException as error:
            self._put(_Failure(after, after, (), error))

    def _put(self, batch: LogBatch) -> None:
        """Queues a batch of the runner's own subscription, waiting while the inbox is full."""
        while not self._stopping.is_set():
            with self._arrived:
                if len(self._inbox) < _QUEUE_SIZE:
                    self._inbox.append(batch)
                    self._arrived.notify()
                    return
            time.sleep(_POLL_SECONDS / 10)


@dataclass(frozen=True, slots=True)
class _Failure(Batch):
    """The runner's own subscription failed: `_take` raises `error`."""

    error: BaseException


def merge_batches(batches: Sequence[LogBatch], limit: int) -> list[LogBatch]:
    """Joins batches that follow each other into batches of about `limit` events."""
    merged: list[LogBatch] = []
    for batch in batches:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.up_to == batch.after
            and len(last.notifications) + len(batch.notifications) <= limit
        ):
            merged[-1] = Batch(last.after, batch.up_to, [*last.notifications, *batch.notifications])
        else:
            merged.append(batch)
    return merged


def _type_of(notification: Notification) -> str:
    return notification.topic.rpartition(":")[2]
