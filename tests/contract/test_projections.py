"""Read models and their runner: the same specifications on SQLite and on PostgreSQL.

A scripted history goes in through the conversation service; the read models are
built by the projection runner; the rows are what a reader would see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from tests.backends import BACKENDS, database_url_for
from tests.histories import every_ending
from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.cli import projections
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service, store_environment
from threadlog.projections.conversation_list import (
    ConversationList,
    ConversationSummary,
    ListQuery,
    all_rows,
    list_conversations,
)
from threadlog.projections.message_history import (
    Message,
    MessageHistory,
    all_messages,
    read_messages,
)
from threadlog.projections.read_models import ReadModels
from threadlog.projections.run_stats import RunStats, StatsRows, all_stats
from threadlog.projections.runner import Applied, Batch, LogBatch, ProjectionRunner
from threadlog.projections.views import PostgresView, Sql, open_view, to_micros

USER = Cause(actor="user:alice", correlation_id="req-1")
AGENT = Cause(actor="agent:assistant", correlation_id="req-1")


@dataclass
class Store:
    service: ConversationService
    settings: Settings

    def read_models(self, batch_size: int = 500) -> ReadModels:
        return ReadModels.open(
            self.service,
            store_environment(self.settings),
            self.settings.read_models_dir,
            batch_size=batch_size,
        )


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    settings = Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    service = open_service(settings)
    yield Store(service, settings)
    service.close()


@pytest.fixture
def read_models(store: Store) -> Iterator[ReadModels]:
    models = store.read_models()
    yield models
    models.close()


def start(service: ConversationService, *, title: str = "t", agent: str = "helper") -> UUID:
    return service.start_conversation(
        owner="anonymous", agent=agent, title=title, metadata={}, cause=USER
    ).value.id


def run(
    service: ConversationService,
    conversation_id: UUID,
    *,
    question: str,
    tokens: Sequence[str],
    end: str = "completed",
) -> None:
    """A user message and the run it starts: tokens, then the run's end (or none)."""
    posted = service.post_message(
        conversation_id, content=question, client_message_id=None, model="demo", cause=USER
    ).value
    live = service.get_conversation(conversation_id)
    for delta in tokens:
        live.stream_token(run_id=posted.run_id, part=0, delta=delta, cause=AGENT)
    if end == "completed":
        live.complete_message(
            run_id=posted.run_id, content="".join(tokens), model_messages="[]", cause=AGENT
        )
        live.complete_run(
            run_id=posted.run_id,
            usage={"output_tokens": len(tokens)},
            duration_ms=1.0,
            time_to_first_token_ms=None,
            cause=AGENT,
        )
    elif end == "failed":
        live.fail_run(run_id=posted.run_id, error="boom", message="model failed", cause=AGENT)
    service.save(live)


def list_rows(models: ReadModels) -> list[ConversationSummary]:
    with models.view(ConversationList.name).read() as sql:
        return all_rows(sql)


def message_rows(models: ReadModels) -> list[Message]:
    with models.view(MessageHistory.name).read() as sql:
        return all_messages(sql)


def snapshot(
    models: ReadModels,
) -> tuple[list[ConversationSummary], list[Message], StatsRows]:
    with models.view(RunStats.name).read() as sql:
        stats = all_stats(sql)
    return list_rows(models), message_rows(models), stats


def catch_up_all(models: ReadModels) -> None:
    for runner in models.runners.values():
        runner.catch_up()


def test_the_conversation_list_has_one_row_per_conversation_with_counts_status_and_activity(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    done, failed, running, empty = (start(service, title=t) for t in ("a", "b", "c", "d"))
    run(service, done, question="q1", tokens=["x", "y"])
    run(service, failed, question="q2", tokens=["x"], end="failed")
    run(service, running, question="q3", tokens=["x", "y", "z"], end="none")

    catch_up_all(read_models)

    rows = {row.id: row for row in list_rows(read_models)}
    got = {
        title: (rows[str(cid)].message_count, rows[str(cid)].run_status, rows[str(cid)].position)
        for title, cid in (("a", done), ("b", failed), ("c", running), ("d", empty))
    }
    assert got == {
        "a": (2, "idle", 7),  # started, posted, run started, 2 tokens, completed message, run end
        "b": (1, "failed", 5),
        "c": (1, "running", 6),
        "d": (0, "idle", 1),
    }
    for cid in (done, failed, running, empty):
        conversation = service.get_conversation(cid)
        row = rows[str(cid)]
        assert (row.owner, row.agent, row.created_at, row.last_activity_at) == (
            "anonymous",
            "helper",
            conversation.created_on,
            conversation.modified_on,
        )


def test_the_list_is_newest_activity_first_and_pages_with_a_cursor(
    store: Store, read_models: ReadModels
) -> None:
    ids = [start(store.service, title=f"chat {i}") for i in range(5)]
    run(store.service, ids[1], question="bump", tokens=["b"])
    catch_up_all(read_models)
    with read_models.view(ConversationList.name).read() as sql:
        first = list_conversations(sql, ListQuery(owner="anonymous", limit=3))
        last = first[-1]
        rest = list_conversations(
            sql,
            ListQuery(
                owner="anonymous", limit=3, after=(to_micros(last.last_activity_at), last.id)
            ),
        )
    expected = [str(ids[1]), str(ids[4]), str(ids[3]), str(ids[2]), str(ids[0])]
    assert [row.id for row in first + rest] == expected


def test_the_list_filters_by_agent_status_and_title_in_any_case(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    start(service, title="Quarterly REPORT 100%", agent="analyst")
    start(service, title="holiday plans", agent="helper")
    failing = start(service, title="report draft", agent="helper")
    run(service, failing, question="q", tokens=[], end="failed")
    catch_up_all(read_models)

    def titles(**filters: object) -> set[str]:
        with read_models.view(ConversationList.name).read() as sql:
            query = ListQuery(**{"owner": "anonymous", "limit": 10, **filters})  # type: ignore[arg-type]
            return {row.title for row in list_conversations(sql, query)}

    assert titles(agent="analyst") == {"Quarterly REPORT 100%"}
    assert titles(status="failed") == {"report draft"}
    assert titles(status="idle") == {"Quarterly REPORT 100%", "holiday plans"}
    assert titles(title_contains="rEpOrT") == {"Quarterly REPORT 100%", "report draft"}
    assert titles(title_contains="100%") == {"Quarterly REPORT 100%"}
    assert titles(title_contains="0_") == set()  # LIKE wildcards are literal characters
    assert titles(owner="someone else") == set()


def test_the_message_history_has_user_and_assistant_messages_in_position_order(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    cid = start(service)
    run(service, cid, question="hello?", tokens=["hi", " there"])
    run(service, cid, question="and then?", tokens=["bye"], end="failed")
    catch_up_all(read_models)
    with read_models.view(MessageHistory.name).read() as sql:
        messages = read_messages(sql, str(cid), after=0, limit=10)
        second_page = read_messages(sql, str(cid), after=messages[0].position, limit=1)
    assert [(m.role, m.content, m.position) for m in messages] == [
        ("user", "hello?", 2),
        ("assistant", "hi there", 6),
        ("user", "and then?", 8),
    ]
    assert messages[0].run_id == messages[1].run_id != messages[2].run_id
    assert [m.position for m in second_page] == [6]


def test_the_message_history_pages_newest_first_before_a_position(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    cid = start(service)
    for n in range(3):
        run(service, cid, question=f"q{n}", tokens=[f"a{n}"])
    catch_up_all(read_models)
    with read_models.view(MessageHistory.name).read() as sql:
        newest = read_messages(sql, str(cid), after=0, limit=4, newest_first=True)
        older = read_messages(
            sql, str(cid), after=0, limit=4, before=newest[-1].position, newest_first=True
        )
        window = read_messages(sql, str(cid), after=2, limit=10, before=newest[0].position)
    assert [m.content for m in newest] == ["a2", "q2", "a1", "q1"]
    assert [m.content for m in older] == ["a0", "q0"]
    assert [m.content for m in window] == ["a0", "q1", "a1", "q2"]


def test_an_event_type_a_read_model_does_not_know_is_skipped_counted_and_passed(
    store: Store, read_models: ReadModels
) -> None:
    cid = start(store.service)
    store.service.recorder.insert_events(
        [
            StoredEvent(
                originator_id=uuid4(),
                originator_version=1,
                topic="threadlog.domain.events:ConversationArchivedInTheFuture",
                state=b"{}",
            )
        ]
    )
    run(store.service, cid, question="after it", tokens=["ok"])

    for runner in read_models.runners.values():
        reached = runner.catch_up()
        assert reached == runner.checkpoint() == store.service.recorder.max_notification_id()
        assert runner.skipped["ConversationArchivedInTheFuture"] == 1

    assert read_models.runners[MessageHistory.name].skipped["TokenStreamed"] == 1
    assert [m.content for m in message_rows(read_models)] == ["after it", "ok"]
    assert [row.message_count for row in list_rows(read_models)] == [2]


class _Crash(RuntimeError):
    pass


class CrashingConversationList(ConversationList):
    """Writes its rows, then dies before the transaction (and its tracking) commits."""

    def __init__(self, crash_at_event: int) -> None:
        self.crash_at_event = crash_at_event
        self.seen = 0

    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        super().apply(sql, events, latest)
        self.seen += len(events)
        if self.seen >= self.crash_at_event:
            raise _Crash(f"crashed after {self.seen} events")


def test_after_a_crash_between_the_rows_and_the_checkpoint_no_event_is_applied_twice_or_lost(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    ids = [start(service, title=f"c{i}") for i in range(3)]
    for cid in ids:
        run(service, cid, question="q", tokens=["a", "b"])
    view = read_models.view(ConversationList.name)
    crashing = ProjectionRunner(
        service, CrashingConversationList(crash_at_event=8), view, batch_size=3
    )

    with pytest.raises(_Crash):
        crashing.catch_up()
    committed = crashing.checkpoint()
    assert 0 < committed < (service.recorder.max_notification_id() or 0)  # part done, not all

    resumed = ProjectionRunner(service, ConversationList(), view, batch_size=3)
    resumed.catch_up()

    rows = list_rows(read_models)
    assert [(r.message_count, r.run_status, r.position) for r in rows] == [(2, "idle", 7)] * 3
    handled = sum(r.applied + sum(r.skipped.values()) for r in (crashing, resumed))
    assert handled == service.recorder.max_notification_id()


def test_a_rebuilt_read_model_equals_the_one_built_live_row_for_row(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    read_models.start()
    try:
        for i in range(4):
            cid = start(service, title=f"live {i}")
            run(service, cid, question=f"q{i}", tokens=[f"t{j}" for j in range(20)])
            if i % 2:
                run(service, cid, question="again", tokens=["x"], end="failed")
        every_ending(service, start(service, title="tools, costs, retries"))
        last = service.recorder.max_notification_id() or 0
        for runner in read_models.runners.values():
            assert runner.wait(last, timeout=10)
    finally:
        read_models.stop()
    live = snapshot(read_models)

    for runner in read_models.runners.values():
        assert runner.rebuild() == last

    assert snapshot(read_models) == live
    assert (len(live[0]), len(live[1]), len(live[2].runs)) == (5, 18, 12)


def test_tool_calls_recorded_in_earlier_batches_join_their_reply(store: Store) -> None:
    every_ending(store.service, start(store.service, title="tools, one event per batch"))
    one_by_one = store.read_models(batch_size=1)
    try:
        catch_up_all(one_by_one)
        separately = message_rows(one_by_one)
    finally:
        one_by_one.close()
    together = store.read_models()
    try:
        for runner in together.runners.values():
            runner.rebuild()
        assert message_rows(together) == separately
    finally:
        together.close()
    assert any(m.tool_calls for m in separately)


def test_a_live_runner_resumes_from_its_checkpoint(store: Store) -> None:
    service = store.service
    first = store.read_models()
    first.start()
    cid = start(service)
    assert first.runners[ConversationList.name].wait(
        service.recorder.max_notification_id() or 0, timeout=10
    )
    first.close()

    run(service, cid, question="while it was down", tokens=["a"])
    second = store.read_models()
    second.start()
    try:
        runner = second.runners[ConversationList.name]
        assert runner.wait(service.recorder.max_notification_id() or 0, timeout=10)
        assert runner.applied + sum(runner.skipped.values()) == 5  # only those after it
        (row,) = list_rows(second)
        assert row.message_count == 2
    finally:
        second.close()


def test_a_read_model_lives_beside_the_events(store: Store) -> None:
    view, factory = open_view(
        ConversationList.name,
        ConversationList.schema,
        store_environment(store.settings),
        store.settings.read_models_dir,
    )
    factory.close()
    if store.settings.database_url is None:
        assert (store.settings.read_models_dir / "conversation_list.sqlite").exists()
    else:
        assert isinstance(view, PostgresView)
        assert view.tracking_table_name == "conversation_list_tracking"


def test_the_cli_reports_lag_and_rebuilds_with_a_progress_line(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = start(store.service)
    run(store.service, cid, question="q", tokens=["a", "b"])
    last = store.service.recorder.max_notification_id()

    projections(store.settings, "status", None)
    before = capsys.readouterr().out
    projections(store.settings, "rebuild", "message_history")
    progress = capsys.readouterr().err
    projections(store.settings, "status", None)
    after = capsys.readouterr().out

    assert f"message_history\tposition 0\tstore {last}\tlag {last}" in before
    assert f"message_history: {last}/{last} events" in progress and "events/s" in progress
    assert f"message_history\tposition {last}\tstore {last}\tlag 0" in after
    assert f"conversation_list\tposition 0\tstore {last}\tlag {last}" in after


def test_a_batch_already_tracked_is_refused_so_two_runners_cannot_both_apply_it(
    store: Store, read_models: ReadModels
) -> None:
    cid = start(store.service)
    run(store.service, cid, question="q", tokens=["a"])
    view = read_models.view(ConversationList.name)
    ProjectionRunner(store.service, ConversationList(), view).catch_up()
    before = list_rows(read_models)
    replayed = store.service.recorder.select_notifications(start=1, limit=3)

    with pytest.raises(IntegrityError):
        ProjectionRunner(store.service, ConversationList(), view).apply(replayed)

    assert list_rows(read_models) == before


def test_a_failing_live_runner_stops_loudly_and_resumes_from_its_checkpoint(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    view = read_models.view(ConversationList.name)
    read_model = CrashingConversationList(crash_at_event=3)
    runner = ProjectionRunner(service, read_model, view, batch_size=1)
    runner.start()
    try:
        cid = start(service)
        run(service, cid, question="q", tokens=["a"])
        last = service.recorder.max_notification_id() or 0
        assert not runner.wait(last, timeout=0.5)
        assert runner.error is not None and "crashed" in runner.error
        read_model.crash_at_event = 10**9  # the fault is fixed; the restart resumes
        assert runner.wait(last, timeout=10)
    finally:
        runner.stop()
    (row,) = list_rows(read_models)
    assert (row.message_count, row.run_status) == (2, "idle")
    assert row.position == service.get_conversation(cid).version


class HandFedLog:
    """A log source whose batches the test hands to the runner, in the test's thread."""

    def __init__(self) -> None:
        self.consumers: list[Callable[[LogBatch], None]] = []

    def add(self, consumer: Callable[[LogBatch], None]) -> Callable[[], None]:
        self.consumers.append(consumer)
        return lambda: self.consumers.remove(consumer)

    def nudge(self) -> None:
        pass

    def hand(self, batch: LogBatch) -> None:
        for consumer in self.consumers:
            consumer(batch)


def test_a_batch_with_nothing_for_a_waiting_runner_moves_it_on_without_waking_its_thread(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    cid = start(service)
    run(service, cid, question="q", tokens=[], end="none")  # a run left streaming
    before = service.recorder.max_notification_id() or 0
    runner = ProjectionRunner(service, MessageHistory(), read_models.view(MessageHistory.name))
    log = HandFedLog()
    runner.start(log)
    try:
        assert runner.wait(before, timeout=10)
        live = service.get_conversation(cid)
        for delta in "abc":
            live.stream_token(run_id=live.active_run_id or "", part=0, delta=delta, cause=AGENT)
        service.save(live)
        tokens = service.recorder.select_notifications(
            start=before, limit=10, inclusive_of_start=False
        )
        deadline = time.monotonic() + 10
        while not runner.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        log.hand(Batch(before, tokens[-1].id, tokens))
        # Moved on when `hand` returns: in this thread, the runner's still waiting.
        assert runner.position == tokens[-1].id
        assert runner.skipped["TokenStreamed"] == 3
        assert runner.waiting
    finally:
        runner.stop()
