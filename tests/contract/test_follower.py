"""One follower of the log per process, feeding every projection runner: the same
specifications on SQLite and on PostgreSQL.

Commits coalesce into batches read with one query; a runner applies what concerns its
read model, moves past the rest without a transaction each time, reads any gap before
a batch from the store itself, and a waiting reader does not wait out the interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

from tests.contract.test_projections import AGENT, USER, Store, list_rows, message_rows, run, start
from tests.contract.test_projections import store as store
from threadlog.domain.application import ConversationService
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.store.follower import Follower
from threadlog.projections import runner as runner_module
from threadlog.projections.conversation_list import ConversationList
from threadlog.projections.message_history import MessageHistory
from threadlog.projections.read_models import ReadModels
from threadlog.projections.runner import Applied, Batch, LogBatch, ProjectionRunner
from threadlog.projections.views import Sql, View


class CountingView:
    """A view that counts its write transactions."""

    def __init__(self, view: View) -> None:
        self._view = view
        self.writes = 0

    def write(self, tracking: Tracking) -> AbstractContextManager[Sql]:
        self.writes += 1
        return self._view.write(tracking)

    def read(self) -> AbstractContextManager[Sql]:
        return self._view.read()

    def clear(self, application_name: str) -> None:
        self._view.clear(application_name)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._view.max_tracking_id(application_name)

    def has_tracking_id(self, application_name: str, notification_id: int | None) -> bool:
        return self._view.has_tracking_id(application_name, notification_id)

    def create_table(self) -> None:
        self._view.create_table()


class HandFedSource:
    """A log source the test feeds by hand."""

    def __init__(self) -> None:
        self.consumers: list[Callable[[LogBatch], None]] = []
        self.nudges = 0

    def add(self, consumer: Callable[[LogBatch], None]) -> Callable[[], None]:
        self.consumers.append(consumer)
        return lambda: self.consumers.remove(consumer)

    def nudge(self) -> None:
        self.nudges += 1


def start_following(follower: Follower) -> None:
    """Starts the follower and waits until it knows where the store ends: it hands on
    what is committed after that (a consumer reads what came before from the store
    itself, which `Collected` does not)."""
    follower.start()
    deadline = time.monotonic() + 10
    while follower.position is None:
        assert time.monotonic() < deadline, "the follower never started"
        time.sleep(0.005)


@pytest.fixture
def read_models(store: Store) -> Iterator[ReadModels]:
    models = store.read_models()
    yield models
    models.close()


@pytest.fixture
def follower(store: Store) -> Iterator[Follower]:
    follower = Follower(store.service.recorder, interval_seconds=0.05)
    start_following(follower)
    yield follower
    follower.stop()


def stream(service: ConversationService, conversation_id: UUID, tokens: int) -> int:
    """A message, then its run's tokens saved one by one (one commit each); returns
    the last global position."""
    posted = service.post_message(
        conversation_id, content="q", client_message_id=None, model="demo", cause=USER
    ).value
    for index in range(tokens):
        live = service.get_conversation(conversation_id)
        live.stream_token(run_id=posted.run_id, part=0, delta=f"t{index}", cause=AGENT)
        service.save(live)
    return service.recorder.max_notification_id() or 0


def token(service: ConversationService, conversation_id: UUID) -> int:
    """One more token of the conversation's active run, in a commit of its own."""
    live = service.get_conversation(conversation_id)
    live.stream_token(run_id=live.active_run_id or "", part=0, delta="t", cause=AGENT)
    service.save(live)
    return service.recorder.max_notification_id() or 0


def last_position(store: Store) -> int:
    return store.service.recorder.max_notification_id() or 0


def test_one_follower_feeds_every_read_model_and_reads_commits_together(
    store: Store,
    read_models: ReadModels,
) -> None:
    follower = Follower(store.service.recorder, interval_seconds=0.2)
    read_models.start(follower)
    follower.start()
    try:
        cid = start(store.service)
        run(store.service, cid, question="first", tokens=["a", "b"])
        last = stream(store.service, cid, tokens=30)
        for runner in read_models.runners.values():
            assert runner.wait(last, timeout=10)
    finally:
        follower.stop()
        read_models.stop()
    assert follower.reads < 33 / 2  # 33 commits, read together
    (row,) = list_rows(read_models)
    assert (row.message_count, row.run_status) == (3, "running")
    assert row.position == store.service.get_conversation(cid).version
    assert [m.content for m in message_rows(read_models)] == ["first", "ab", "q"]


def test_a_read_model_moves_past_events_it_ignores_without_a_transaction_each_time(
    store: Store,
    read_models: ReadModels,
    follower: Follower,
) -> None:
    cid = start(store.service)
    view = CountingView(read_models.view(MessageHistory.name))
    runner = ProjectionRunner(store.service, MessageHistory(), view)
    runner.start(follower)
    try:
        assert runner.wait(last_position(store), timeout=10)
        writes = view.writes
        last = stream(store.service, cid, tokens=40)  # a message, then only tokens
        assert runner.wait(last, timeout=10)
        assert view.writes - writes <= 3  # the message; the tokens once a second at most
        assert runner.skipped["TokenStreamed"] == 40
    finally:
        runner.stop()
    assert runner.checkpoint() == last  # recorded on stop


def test_skipped_events_reach_the_tracking_record_within_about_a_second(
    store: Store,
    read_models: ReadModels,
    follower: Follower,
) -> None:
    cid = start(store.service)
    view = read_models.view(MessageHistory.name)
    runner = ProjectionRunner(store.service, MessageHistory(), view)
    runner.start(follower)
    try:
        last = stream(store.service, cid, tokens=5)
        started = time.monotonic()
        reader_elsewhere = ProjectionRunner(store.service, MessageHistory(), view)
        assert reader_elsewhere.wait(last, timeout=5)  # polls the view's tracking
        assert time.monotonic() - started < 2.5
    finally:
        runner.stop()


def test_a_reader_waiting_for_a_position_does_not_wait_out_the_interval(
    store: Store,
    read_models: ReadModels,
) -> None:
    follower = Follower(store.service.recorder, interval_seconds=30)
    cid = start(store.service)
    read_models.start(follower)
    follower.start()
    runner = read_models.runners[ConversationList.name]
    try:
        assert runner.wait(last_position(store), timeout=10)
        last = stream(store.service, cid, tokens=3)  # activity the list defers
        started = time.monotonic()
        assert runner.wait(last, timeout=10)
        assert time.monotonic() - started < 2
    finally:
        follower.stop()
        read_models.stop()
    (row,) = list_rows(read_models)
    assert row.position == store.service.get_conversation(cid).version


def test_a_runner_reads_what_came_before_a_batch_from_the_store(
    store: Store,
    read_models: ReadModels,
) -> None:
    service = store.service
    ids = [start(service, title=f"c{i}") for i in range(3)]
    for cid in ids:
        run(service, cid, question="q", tokens=["a"])
    source = HandFedSource()
    view = CountingView(read_models.view(ConversationList.name))
    runner = ProjectionRunner(service, ConversationList(), view, batch_size=4)
    runner.start(source)
    try:
        middle = last_position(store)
        assert runner.wait(middle, timeout=10)  # caught up from the store on start
        run(service, ids[0], question="missed", tokens=["b"])
        missed = last_position(store)
        run(service, ids[1], question="handed over", tokens=["c"])
        last = last_position(store)
        handed = service.recorder.select_notifications(
            start=missed, limit=100, inclusive_of_start=False
        )
        _deliver(source, Batch(missed, last, handed))
        assert runner.wait(last, timeout=10)
        _deliver(source, Batch(missed, last, handed))  # again: nothing applied twice
        _deliver(source, Batch(middle, missed, []))  # behind: ignored
        time.sleep(0.3)
    finally:
        runner.stop()
    rows = {row.title: row for row in list_rows(read_models)}
    assert [rows[f"c{i}"].message_count for i in range(3)] == [4, 4, 2]
    assert runner.checkpoint() == last
    assert source.consumers == []  # removed on stop


def test_batches_dropped_while_a_runner_is_busy_are_read_again_from_the_store(
    store: Store,
    read_models: ReadModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_module, "_INBOX_BATCHES", 2)
    follower = Follower(store.service.recorder, interval_seconds=0)
    follower.start()
    cid = start(store.service)
    runner = read_models.runners[ConversationList.name]
    blocked = threading.Event()
    real_apply = runner.read_model.apply

    def slow_apply(sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        blocked.wait(5)
        real_apply(sql, events, latest)

    runner.read_model.apply = slow_apply  # type: ignore[method-assign]
    runner.start(follower)
    try:
        last = stream(store.service, cid, tokens=20)  # batches pile up while it is stuck
        blocked.set()
        assert runner.wait(last, timeout=10)
    finally:
        runner.stop()
        follower.stop()
    assert follower.reads > 2
    (row,) = list_rows(read_models)
    assert (row.message_count, row.position) == (1, store.service.get_conversation(cid).version)


def _deliver(source: HandFedSource, batch: Batch) -> None:
    for consumer in source.consumers:
        consumer(batch)


class Collected:
    """A consumer that keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[LogBatch] = []
        self._lock = threading.Lock()

    def __call__(self, batch: LogBatch) -> None:
        with self._lock:
            self.batches.append(batch)

    def ids(self) -> list[int]:
        with self._lock:
            return [n.id for batch in self.batches for n in batch.notifications]

    def wait_for(self, position: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.batches and self.batches[-1].up_to >= position:
                    return
            time.sleep(0.01)
        raise AssertionError(f"no batch reached {position}")


def test_what_this_process_commits_is_handed_on_without_reading_it_back(store: Store) -> None:
    service = store.service
    follower = Follower(service.recorder, interval_seconds=0)  # a read per wake-up
    follower.follow_commits_of(service)
    collected = Collected()
    follower.add(collected)
    start_following(follower)
    try:
        cid = start(service)
        collected.wait_for(last_position(store))
        reads = follower.reads
        last = stream(service, cid, tokens=30)  # 31 commits
        collected.wait_for(last)
    finally:
        follower.stop()
    # At most the one read of the LISTEN taking effect (it may come after the first).
    assert follower.reads - reads <= 1
    stored = service.recorder.select_notifications(start=1, limit=1000)
    assert collected.ids() == [n.id for n in stored]
    assert [n.state for b in collected.batches for n in b.notifications] == [
        n.state for n in stored
    ]


def test_another_writers_commits_between_this_process_commits_are_read_from_the_store(
    store: Store,
) -> None:
    service = store.service
    other = open_service(store.settings)  # another process's writer: it offers nothing
    follower = Follower(service.recorder, interval_seconds=0)
    follower.follow_commits_of(service)
    collected = Collected()
    follower.add(collected)
    start_following(follower)
    try:
        mine, theirs = start(service), start(other)
        stream(service, mine, tokens=0)
        stream(other, theirs, tokens=0)
        for index in range(10):
            token(service, mine)
            token(other, theirs)
            if index % 3 == 0:
                time.sleep(0.02)
        last = token(service, mine)
        collected.wait_for(last)
    finally:
        follower.stop()
        other.close()
    stored = service.recorder.select_notifications(start=1, limit=1000)
    assert collected.ids() == [n.id for n in stored]  # each once, in order, no gap
    for before, after in zip(collected.batches, collected.batches[1:], strict=False):
        assert after.after == before.up_to


def heard_before_marker(store: Store, commit: Callable[[], object]) -> list[str]:
    """The NOTIFY payloads on the store's channel while `commit` runs (heard by a LISTEN
    of the test's, which registers nothing): those before a marker sent after it."""
    recorder = store.service.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    channel = Identifier(recorder.channel_name)
    url = store.settings.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as probe, psycopg.connect(url) as marker:
        probe.execute(SQL("LISTEN {0}").format(channel))
        commit()
        marker.execute(SQL("NOTIFY {0}, 'marker'").format(channel))
        marker.commit()
        heard: list[str] = []
        for notify in probe.notifies(timeout=30):
            if notify.payload == "marker":
                return heard
            heard.append(notify.payload)
    raise AssertionError("the marker never came")


def wait_registered_for_every_commit(store: Store) -> None:
    """Waits until a listener registered for every commit (a subscription)."""
    recorder = store.service.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    table = Identifier(f"{recorder.events_table_name}_followers")
    query = SQL("SELECT count(*) FROM {0} WHERE committer IS NULL").format(table)
    url = store.settings.database_url
    assert url is not None
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as connection:
        while (row := connection.execute(query).fetchone()) is None or row[0] == 0:
            assert time.monotonic() < deadline, "the subscription never registered"
            time.sleep(0.01)


def postgres_only(store: Store) -> None:
    if store.settings.database_url is None:
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")


def test_commits_the_only_follower_is_offered_notify_no_one(store: Store) -> None:
    postgres_only(store)
    service = store.service
    follower = Follower(service.recorder)
    follower.follow_commits_of(service)
    start_following(follower)
    try:
        collected = Collected()
        follower.add(collected)
        last = 0

        def commit() -> None:
            nonlocal last
            last = stream(service, start(service), tokens=3)

        heard = heard_before_marker(store, commit)
        collected.wait_for(last)
    finally:
        follower.stop()
    assert heard == []


def test_a_subscription_is_notified_of_every_commit(store: Store) -> None:
    postgres_only(store)
    service = store.service
    follower = Follower(service.recorder)
    follower.follow_commits_of(service)
    start_following(follower)
    subscription = service.recorder.subscribe(gt=last_position(store))
    try:
        wait_registered_for_every_commit(store)
        cid = start(service)
        posted = stream(service, cid, tokens=0)
        while next(subscription).id < posted:
            pass
        heard = heard_before_marker(store, lambda: token(service, cid))
        assert next(subscription).id > posted
    finally:
        subscription.stop()
        follower.stop()
    assert len(heard) == 1
