"""One follower of the store's notification log per process, for all its consumers.

The relay and each projection runner used to follow the log on their own: each woke
on every commit's NOTIFY, ran its own SELECT and committed its own checkpoint, so one
token cost the store about twenty transactions. The follower listens once (LISTEN on
PostgreSQL; on SQLite the recorder's in-process waiter and a slow poll for other
processes' writes), reads what was committed since its last read with one query, and
hands that batch to every consumer. Reads are coalesced: at most one every `interval`
while commits keep coming, unless a reader waiting for a position `nudge`s it.

A batch covers the notification ids (after, up_to] completely: ids commit in order (the
PostgreSQL recorder locks the table in every insert; SQLite has one writer), so once id
N is read, no id below it can appear later. Consumers keep their own checkpoints: each
skips what it has already handled, and reads a gap before a batch (its start, a batch
it dropped) from the store itself.
"""

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal, cast

import structlog
from eventsourcing.persistence import ApplicationRecorder, TrackingRecorder
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresTrackingRecorder,
)
from psycopg.sql import SQL, Identifier

from threadlog.infra.store.eventstore import reconnect_promptly
from threadlog.infra.store.sqlite import (
    CROSS_PROCESS_POLL_SECONDS,
    NotifyingSQLiteApplicationRecorder,
)
from threadlog.projections.runner import Batch

log = structlog.get_logger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.05
RESTART_DELAY_SECONDS = 1.0
_LISTEN_TIMEOUT_SECONDS = 0.5  # how often the listener checks it should stop


Consumer = Callable[[Batch], None]
"""Called in the follower's thread with each batch: it must not block (queue it)."""


class Follower:
    def __init__(
        self,
        recorder: ApplicationRecorder,
        *,
        interval_seconds: float = FOLLOW_INTERVAL_SECONDS,
        batch_size: int = 500,
    ) -> None:
        self._recorder = _own_pool(recorder)
        self._closes = self._recorder is not recorder
        self._interval = interval_seconds
        self._batch_size = batch_size
        self._consumers: list[Consumer] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()  # something was committed (or may have been)
        self._now = threading.Event()  # read without waiting out the interval
        self._stopping = threading.Event()
        self._listen_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_read = float("-inf")
        self.position: int | None = None
        """The last notification id read (None before the first start)."""
        self.reads = 0

    def add(self, consumer: Consumer) -> Callable[[], None]:
        """Hands every later batch to `consumer`; returns what removes it."""
        with self._lock:
            self._consumers.append(consumer)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._consumers.remove(consumer)

        return remove

    def tracking(self, recorder: TrackingRecorder) -> TrackingRecorder:
        """`recorder` (a consumer's checkpoints, in the same database) through the
        follower's own connections, which skip the pre-ping."""
        own = self._recorder
        if self._closes and isinstance(recorder, PostgresTrackingRecorder):
            assert isinstance(own, PostgresApplicationRecorder)
            moved = copy.copy(recorder)
            moved.datastore = own.datastore
            return moved
        return recorder

    def nudge(self) -> None:
        """Reads at once, not after the interval: a reader waits for a position."""
        self._now.set()
        self._wake.set()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="threadlog-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.nudge()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._closes and isinstance(self._recorder, PostgresApplicationRecorder):
            self._recorder.datastore.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow()
            except Exception as error:
                log.error("follower.failed", error=repr(error), restart_in=RESTART_DELAY_SECONDS)
                self._stopping.wait(RESTART_DELAY_SECONDS)

    def _follow(self) -> None:
        if self.position is None:
            # Consumers catch up from their own checkpoints: the follower starts at the end.
            self.position = self._recorder.max_notification_id() or 0
            log.info("follower.started", position=self.position)
        self._listen_error = None
        with self._waking() as poll_seconds:
            self._wake.set()  # commits made while nobody listened
            while not self._stopping.is_set():
                if self._listen_error is not None:
                    raise self._listen_error
                woken = self._wake.wait(poll_seconds or _LISTEN_TIMEOUT_SECONDS)
                if not woken and poll_seconds is None:
                    continue  # only to look at the stop flag and the listener
                self._coalesce()
                if self._stopping.is_set():
                    return
                self._wake.clear()
                self._now.clear()
                self._read()

    def _coalesce(self) -> None:
        """Waits out the rest of the interval since the last read, unless nudged."""
        rest = self._last_read + self._interval - time.monotonic()
        if rest > 0:
            self._now.wait(rest)

    def _read(self) -> None:
        after = self.position or 0
        notifications = self._recorder.select_notifications(
            start=after, limit=self._batch_size, inclusive_of_start=False
        )
        self._last_read = time.monotonic()
        self.reads += 1
        if not notifications:
            return
        batch = Batch(after, notifications[-1].id, notifications)
        self.position = batch.up_to
        with self._lock:
            consumers = list(self._consumers)
        for consumer in consumers:
            try:
                consumer(batch)
            except Exception as error:  # one consumer's fault is not the others'
                log.error("follower.consumer_failed", error=repr(error))
        if len(notifications) == self._batch_size:
            self.nudge()  # a backlog: the next page at once

    @contextlib.contextmanager
    def _waking(self) -> Iterator[float | None]:
        """Sets `_wake` on commits while open; yields how often to read unwoken (None: never)."""
        recorder = self._recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            done = threading.Event()
            listener = threading.Thread(
                target=self._listen, args=(recorder, done), name="threadlog-listen", daemon=True
            )
            listener.start()
            try:
                yield None
            finally:
                done.set()
                listener.join(timeout=5)
        elif isinstance(recorder, NotifyingSQLiteApplicationRecorder):
            recorder.add_waiter(self._wake)
            try:
                yield CROSS_PROCESS_POLL_SECONDS  # other processes' writes
            finally:
                recorder.remove_waiter(self._wake)
        else:
            yield CROSS_PROCESS_POLL_SECONDS

    def _listen(self, recorder: PostgresApplicationRecorder, done: threading.Event) -> None:
        """One LISTEN connection; a failure (PostgreSQL restarting) restarts `_follow`."""
        try:
            with recorder.datastore.get_connection() as connection:
                connection.execute(SQL("LISTEN {0}").format(Identifier(recorder.channel_name)))
                while not done.is_set():
                    for _ in connection.notifies(timeout=_LISTEN_TIMEOUT_SECONDS, stop_after=1):
                        self._wake.set()
        except BaseException as error:
            self._listen_error = error
            self._wake.set()


def _own_pool(recorder: ApplicationRecorder) -> ApplicationRecorder:
    """On PostgreSQL, the same table through a few connections of the follower's own
    (one listens, one reads, one records a consumer's checkpoints), with no pre-ping:
    the service's pool checks a connection with an empty query at each checkout, which
    PostgreSQL counts as a transaction."""
    if not isinstance(recorder, PostgresApplicationRecorder):
        return recorder
    shared = recorder.datastore
    kwargs = shared.pool.kwargs
    params = dict(kwargs() if callable(kwargs) else kwargs or {})
    datastore = PostgresDatastore(
        dbname=str(params.get("dbname", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", "5432")),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        connect_timeout=shared.pool.timeout,
        pool_size=3,
        max_overflow=1,
        schema=shared.schema,
        originator_id_type=cast(Literal["uuid", "text"], shared.originator_id_type),
    )
    own = type(recorder)(datastore, events_table_name=recorder.events_table_name)
    reconnect_promptly(own)
    return own
