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

What this process commits it need not read back: the commit listener `offer`s the rows
it stored, and a batch is made of them without a query when they follow the position
without a gap and nothing else is known to have been committed. The same order makes
that sound: a transaction's ids follow the last committed ones, so rows that continue
the position hide no other writer's rows. Other writers are known by their NOTIFY,
whose payload is the last id they committed and the committing process (this
process's own are ignored once its commits are offered; a NOTIFY without a payload,
a slow poll's wake on SQLite or a waiting reader's nudge always reads), and by a gap
before the rows offered.

On PostgreSQL the follower registers its LISTEN (infra/store/postgres.py): a commit
NOTIFYs only while a listener wants it, so this process's own commits, which it is
offered, do not cost the listening session a transaction each.
"""

import contextlib
import copy
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast
from uuid import UUID

import structlog
from eventsourcing.persistence import (
    ApplicationRecorder,
    Notification,
    Recording,
    TrackingRecorder,
)
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresTrackingRecorder,
)
from psycopg import Connection
from psycopg.sql import SQL, Identifier

from threadlog.domain.application import ConversationService
from threadlog.infra.store.eventstore import reconnect_promptly
from threadlog.infra.store.postgres import ColumnArraysPostgresApplicationRecorder, committer
from threadlog.infra.store.sqlite import (
    CROSS_PROCESS_POLL_SECONDS,
    NotifyingSQLiteApplicationRecorder,
)
from threadlog.projections.runner import Batch

log = structlog.get_logger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.05
RESTART_DELAY_SECONDS = 1.0
_LISTEN_TIMEOUT_SECONDS = 0.5  # how often the listener checks it should stop
ANNOUNCED_POLL_SECONDS = 1.0


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
        # Rows this process committed, not yet handed on; the highest id other writers
        # announced; whether something unannounced may have been committed.
        self._offered: list[Notification] = []
        self._announced = 0
        self._must_read = True
        self._offered_to: str | None = None  # this process, once its commits are offered
        self._poll_seconds: float | None = None  # on PostgreSQL: a read unwoken this often
        self._name = f"follower-{secrets.token_hex(6)}"  # its registration
        self.position: int | None = None
        """The last notification id read (None before the first start)."""
        self.reads = 0
        """Queries of the log (a batch made of offered rows is not one)."""

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

    def offer(self, notifications: Sequence[Notification]) -> None:
        """Rows this process has just committed (the commit listener, any thread)."""
        if notifications:
            with self._lock:
                self._offered.extend(notifications)
            self._wake.set()

    def follow_commits_of(self, service: ConversationService) -> None:
        """Takes what `service` commits from its commit listener, not from the store
        (and so ignores this process's NOTIFYs). Every commit of this process must go
        through `service`: one that does not is read only at the next gap, poll or nudge."""
        service.on_commit(self._offer_recordings)
        self._offered_to = committer()

    def follow_announcements_of(self, committer_id: str) -> Callable[[int], None]:
        """Another process (the API process that started this one: infra/background.py)
        says what it committed by calling the returned function with the last id of
        each commit: its commits NOTIFY no one on its behalf (`committer_id` is its
        `committer()`), and each announcement is read with a query, coalesced as
        NOTIFYs are. An announcement lost on the way is made good by a slow poll."""
        self._offered_to = committer_id
        self._poll_seconds = ANNOUNCED_POLL_SECONDS
        return self._announce_id

    def _announce_id(self, last: int) -> None:
        with self._lock:
            self._announced = max(self._announced, last)
        self._wake.set()

    def _offer_recordings(self, recordings: Sequence[Recording[UUID]]) -> None:
        self.offer([recording.notification for recording in recordings])

    def _announce(self, payload: str) -> None:
        """A NOTIFY: its payload is the last id its transaction committed and the
        committing process, if it says."""
        last, _, by = payload.partition(" ")
        if by and by == self._offered_to:
            return  # offered
        with self._lock:
            if last.isdigit():
                self._announced = max(self._announced, int(last))
            else:
                self._must_read = True
        self._wake.set()

    def nudge(self) -> None:
        """Reads at once, not after the interval: a reader waits for a position (which
        another process may have committed: query)."""
        self._must_read = True
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
        self._must_read = True  # nobody listened for a while
        with self._waking() as poll_seconds:
            self._wake.set()  # commits made while nobody listened
            while not self._stopping.is_set():
                if self._listen_error is not None:
                    raise self._listen_error
                woken = self._wake.wait(poll_seconds or _LISTEN_TIMEOUT_SECONDS)
                if not woken and poll_seconds is None:
                    continue  # only to look at the stop flag and the listener
                if not woken:
                    self._must_read = True  # another process may have written
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
        notifications = self._offered_batch(after)
        if notifications is None:
            notifications = self._recorder.select_notifications(
                start=after, limit=self._batch_size, inclusive_of_start=False
            )
            self.reads += 1
        self._last_read = time.monotonic()
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

    def _offered_batch(self, after: int) -> Sequence[Notification] | None:
        """The offered rows after `after`, when they are all there is to read (else None:
        query). Taking them, and the reasons to query, at once: whatever is committed
        later is offered, announced or polled for later."""
        if self._offered_to is None:
            return None  # not offered: every wake-up is a commit to read
        with self._lock:
            offered, self._offered = self._offered, []
            must_read, self._must_read = self._must_read, False
            announced = self._announced
        offered.sort(key=_id_of)
        rows: list[Notification] = []
        expected = after + 1
        for notification in offered:
            if notification.id < expected:
                continue  # read already
            if notification.id > expected or len(rows) == self._batch_size:
                return None  # a gap: another writer's rows, or more than a batch
            rows.append(notification)
            expected += 1
        if must_read or (rows[-1].id if rows else after) < announced:
            return None
        return rows

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
                yield self._poll_seconds
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
                unlisten = self._listen_on(recorder, connection)
                self._announce("")  # what was committed before the LISTEN took effect
                while not done.is_set():
                    for notify in connection.notifies(
                        timeout=_LISTEN_TIMEOUT_SECONDS, stop_after=1
                    ):
                        self._announce(notify.payload)
                unlisten()
        except BaseException as error:
            self._listen_error = error
            self._wake.set()

    def _listen_on(
        self, recorder: PostgresApplicationRecorder, connection: Connection[Any]
    ) -> Callable[[], None]:
        """LISTENs, registered (where the recorder keeps a registry) for the commits not
        offered to it; returns what unregisters it."""
        connection.execute(SQL("LISTEN {0}").format(Identifier(recorder.channel_name)))
        if not isinstance(recorder, ColumnArraysPostgresApplicationRecorder):
            return lambda: None
        name = self._name
        recorder.register_listener(connection, name, self._offered_to)

        def unlisten() -> None:
            with contextlib.suppress(Exception):  # else pruned by a later registration
                recorder.unregister_listener(connection, name)

        return unlisten


def _id_of(notification: Notification) -> int:
    return notification.id


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
