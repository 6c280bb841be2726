"""A SQLite application recorder that supports `subscribe()`.

eventsourcing 9.5.6's SQLite recorder has no subscriptions (only PostgreSQL's has,
through LISTEN/NOTIFY). This one wakes its subscribers when this process inserts
events, and polls at a slow interval for writers in other processes.
"""

import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import (
    ApplicationRecorder,
    ListenNotifySubscription,
    StoredEvent,
    Subscription,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

from threadlog.infra import tracing

CROSS_PROCESS_POLL_SECONDS = 0.5


class NotifyingSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        self._waiters: set[threading.Event] = set()
        self._waiters_lock = threading.Lock()

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        with tracing.span("store.insert", events=len(stored_events)):
            notification_ids = super().insert_events(stored_events, **kwargs)
        with self._waiters_lock:
            for waiter in self._waiters:
                waiter.set()
        return notification_ids

    def add_waiter(self, waiter: threading.Event) -> None:
        with self._waiters_lock:
            self._waiters.add(waiter)

    def remove_waiter(self, waiter: threading.Event) -> None:
        with self._waiters_lock:
            self._waiters.discard(waiter)

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return SQLiteSubscription(recorder=self, gt=gt, topics=topics)


class SQLiteSubscription(ListenNotifySubscription[NotifyingSQLiteApplicationRecorder]):
    def __init__(
        self,
        recorder: NotifyingSQLiteApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        recorder.add_waiter(self._has_been_notified)
        self._poll_thread = threading.Thread(target=self._poll, daemon=True)
        self._poll_thread.start()

    def stop(self) -> None:
        self._recorder.remove_waiter(self._has_been_notified)
        super().stop()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._poll_thread.join()

    def _poll(self) -> None:
        stopped = threading.Event()
        while not self._has_been_stopped:
            stopped.wait(CROSS_PROCESS_POLL_SECONDS)
            self._has_been_notified.set()
