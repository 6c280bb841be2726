"""The run statistics read model, tool calls and outputs in the message history,
schema versions and lag logging: the same specifications on SQLite and PostgreSQL.

Histories are written through the domain (tests/histories.py) and projected by the
runner; the assertions read what the endpoints read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent, Tracking
from structlog.testing import capture_logs

from tests.backends import BACKENDS, database_url_for
from tests.contract.test_projections import Store
from tests.histories import Run, ToolUse, ask, every_ending, start_conversation
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service, store_environment
from threadlog.projections.message_history import Message, MessageHistory, read_messages
from threadlog.projections.read_models import ReadModels
from threadlog.projections.run_stats import (
    ConversationStats,
    GroupBy,
    RunStats,
    Timing,
    Usage,
    UsageQuery,
    all_runs,
    conversation_stats,
    popular_agents,
    usage,
)
from threadlog.projections.runner import UPSTREAM, ProjectionRunner
from threadlog.projections.views import PostgresView, SQLiteView, ViewSchema, open_view


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


def caught_up(models: ReadModels) -> ReadModels:
    for runner in models.runners.values():
        runner.catch_up()
    return models


def stats_of(models: ReadModels, conversation_id: object) -> ConversationStats | None:
    with models.view(RunStats.name).read() as sql:
        return conversation_stats(sql, str(conversation_id))


def usage_of(models: ReadModels, query: UsageQuery) -> list[Usage]:
    with models.view(RunStats.name).read() as sql:
        return usage(sql, query)


def history(models: ReadModels, conversation_id: object) -> list[Message]:
    with models.view(MessageHistory.name).read() as sql:
        return read_messages(sql, str(conversation_id), after=0, limit=100)


def test_conversation_stats_count_messages_runs_by_outcome_tokens_tool_calls_timings_and_cost(
    store: Store, read_models: ReadModels
) -> None:
    cid = start_conversation(store.service)
    every_ending(store.service, cid)

    stats = stats_of(caught_up(read_models), cid)

    assert stats == ConversationStats(
        conversation_id=str(cid),
        owner="anonymous",
        messages={"assistant": 2, "user": 6},
        runs={
            "running": 1,
            "completed": 2,
            "failed": 1,
            "cancelled": 1,
            "interrupted": 1,
        },
        runs_by_agent_version={"helper@0": 6},  # runs posted with a bare model name
        retried_runs=1,
        input_tokens=13,
        output_tokens=7,
        tool_calls=4,  # the lost attempt's call happened too
        tool_errors=1,
        tool_calls_by_name={"calc": 1, "search": 3},
        time_to_first_token_ms=Timing(median=20.0, max=30.0),
        duration_ms=Timing(median=200.0, max=300.0),
        cost_usd=0.25,
    )


def test_a_conversation_whose_runs_have_no_known_price_has_no_cost(
    store: Store, read_models: ReadModels
) -> None:
    cid = start_conversation(store.service)
    ask(store.service, cid, "free?", Run(output_tokens=4))
    ask(store.service, cid, "fails", Run(end="failed"))

    stats = stats_of(caught_up(read_models), cid)

    assert stats is not None
    assert (stats.cost_usd, stats.output_tokens, stats.runs["completed"]) == (None, 4, 1)


def test_a_retried_run_is_one_run_with_two_attempts_and_one_ending(
    store: Store, read_models: ReadModels
) -> None:
    cid = start_conversation(store.service)
    run_id = ask(store.service, cid, "q", Run(lost_attempt=[], output_tokens=1))

    with caught_up(read_models).view(RunStats.name).read() as sql:
        (run,) = all_runs(sql)

    assert (run.run_id, run.attempts, run.outcome, run.output_tokens) == (
        run_id,
        2,
        "completed",
        1,
    )


def test_usage_groups_runs_by_day_agent_and_user_within_the_window(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    mine = start_conversation(service, agent="helper")
    analyst = start_conversation(service, agent="analyst")
    bobs = start_conversation(service, owner="bob", agent="helper")
    ask(service, mine, "a", Run(input_tokens=1, output_tokens=2, cost_usd=0.5))
    ask(service, mine, "b", Run(end="failed"))
    ask(service, analyst, "c", Run(input_tokens=10, output_tokens=20))
    ask(service, bobs, "d", Run(input_tokens=100, output_tokens=200, cost_usd=1.0))
    caught_up(read_models)
    with read_models.view(RunStats.name).read() as sql:
        starts = sorted(run.started_at for run in all_runs(sql))
    end = starts[-1] + timedelta(microseconds=1)

    def groups(
        group_by: GroupBy,
        owner: str | None = None,
        since: datetime = starts[0],
        until: datetime = end,
    ) -> list[Usage]:
        query = UsageQuery(owner=owner, start=since, end=until, group_by=group_by)
        return usage_of(read_models, query)

    assert groups("user") == [
        Usage(
            key="anonymous",
            runs=3,
            conversations=2,
            input_tokens=11,
            output_tokens=22,
            cost_usd=0.5,
        ),
        Usage(
            key="bob", runs=1, conversations=1, input_tokens=100, output_tokens=200, cost_usd=1.0
        ),
    ]
    assert [(g.key, g.runs, g.conversations, g.cost_usd) for g in groups("agent")] == [
        ("analyst", 1, 1, None),
        ("helper", 3, 2, 1.5),
    ]
    assert [(g.key, g.runs) for g in groups("agent", owner="anonymous")] == [
        ("analyst", 1),
        ("helper", 2),
    ]
    days = {moment.date().isoformat() for moment in starts}
    assert {g.key for g in groups("day")} == days
    assert sum(g.runs for g in groups("day")) == 4
    # [start, end): the last run starts at starts[-1], outside a window that ends there.
    assert sum(g.runs for g in groups("user", until=starts[-1])) == 3
    assert sum(g.runs for g in groups("user", since=starts[1])) == 3


def test_popular_agents_are_ranked_by_conversations_with_runs_then_by_runs(
    store: Store, read_models: ReadModels
) -> None:
    service = store.service
    for _ in range(2):
        ask(service, start_conversation(service, agent="writer"), "w")
    busy = start_conversation(service, agent="coder")
    for _ in range(3):
        ask(service, busy, "c")
    start_conversation(service, agent="idle")  # no run: not ranked
    ask(service, start_conversation(service, owner="bob", agent="bobs"), "b")
    caught_up(read_models)
    with read_models.view(RunStats.name).read() as sql:
        since = min(run.started_at for run in all_runs(sql))
        ranked = popular_agents(sql, owner="anonymous", since=since, limit=10)
        top = popular_agents(sql, owner="anonymous", since=since, limit=1)
        later = popular_agents(sql, owner="anonymous", since=since + timedelta(days=1), limit=10)

    assert [(a.agent, a.conversations, a.runs) for a in ranked] == [
        ("writer", 2, 2),
        ("coder", 1, 3),
    ]
    assert [a.agent for a in top] == ["writer"]
    assert later == []


def test_an_event_type_run_stats_does_not_know_is_skipped_and_counted(
    store: Store, read_models: ReadModels
) -> None:
    cid = start_conversation(store.service)
    ask(store.service, cid, "before", Run(output_tokens=1))
    store.service.recorder.insert_events(
        [
            StoredEvent(
                originator_id=uuid4(),
                originator_version=1,
                topic="threadlog.domain.events:RunBilledInTheFuture",
                state=b"{}",
            )
        ]
    )
    ask(store.service, cid, "after", Run(output_tokens=2))

    runner = read_models.runners[RunStats.name]
    reached = runner.catch_up()

    assert reached == store.service.recorder.max_notification_id()
    assert runner.skipped["RunBilledInTheFuture"] == 1
    stats = stats_of(read_models, cid)
    assert stats is not None
    assert (stats.runs["completed"], stats.output_tokens) == (2, 3)


def test_an_assistant_message_has_its_runs_tool_calls_in_order_and_its_structured_output(
    store: Store, read_models: ReadModels
) -> None:
    cid = start_conversation(store.service)
    ask(
        store.service,
        cid,
        "look it up",
        Run(
            tools=[
                ToolUse(name="search", args={"q": "x"}, result={"hits": [1, 2]}),
                ToolUse(name="fetch", args="not json", error="HTTP 500"),
            ],
            lost_attempt=[ToolUse(name="search", args={"attempt": 1})],
            output={"answer": 42},
            reply="found it",
        ),
    )
    ask(store.service, cid, "in words", Run(reply="plain"))

    user, found, _, plain = history(caught_up(read_models), cid)

    assert (user.tool_calls, user.output) == (None, None)
    assert found.output == {"answer": 42}
    assert found.tool_calls is not None
    assert [(c.tool_name, c.args, c.result, c.error) for c in found.tool_calls] == [
        ("search", {"q": "x"}, {"hits": [1, 2]}, None),
        ("fetch", "not json", None, "HTTP 500"),
    ]
    assert (plain.tool_calls, plain.output) == ([], None)


def test_tool_calls_of_a_run_that_ended_without_a_message_are_not_kept(
    store: Store, read_models: ReadModels
) -> None:
    cid = start_conversation(store.service)
    ask(store.service, cid, "x", Run(end="failed", tools=[ToolUse(name="search")]))
    caught_up(read_models)
    with read_models.view(MessageHistory.name).read() as sql:
        sql.execute("SELECT COUNT(*) AS waiting FROM message_history_tool_calls")
        row = sql.fetchone()
    assert row is not None and row["waiting"] == 0


OLD_MESSAGE_HISTORY = ViewSchema(
    tables=("message_history",),
    statements=(
        "CREATE TABLE IF NOT EXISTS message_history ("
        "conversation_id TEXT NOT NULL, position BIGINT NOT NULL, "
        "message_id TEXT NOT NULL, run_id TEXT NOT NULL, role TEXT NOT NULL, "
        "content TEXT NOT NULL, created_at BIGINT NOT NULL, "
        "PRIMARY KEY (conversation_id, position))",
    ),
)


def test_a_read_model_whose_schema_version_changed_is_emptied_and_rebuilt_from_the_log(
    store: Store,
) -> None:
    cid = start_conversation(store.service)
    ask(store.service, cid, "q", Run(tools=[ToolUse(name="search")], reply="a"))
    last = store.service.recorder.max_notification_id() or 0
    env, directory = store_environment(store.settings), store.settings.read_models_dir
    old, factory = open_view(MessageHistory.name, OLD_MESSAGE_HISTORY, env, directory)
    with old.write(Tracking(UPSTREAM, last)) as sql:  # built by the old version
        sql.execute(
            "INSERT INTO message_history VALUES (?, 2, 'm', 'r', 'user', 'old row', 0)",
            (str(cid),),
        )
    factory.close()

    with capture_logs() as logs:
        models = store.read_models()
    try:
        runner = models.runners[MessageHistory.name]
        assert runner.checkpoint() == 0
        view = models.view(MessageHistory.name)
        assert isinstance(view, SQLiteView | PostgresView)
        # eventsourcing's own row in the tracking table survives the upgrade.
        assert view.max_tracking_id(view.table_migration_identifier) == 1
        assert history(models, cid) == []
        runner.catch_up()
        messages = history(models, cid)
    finally:
        models.close()
    with capture_logs() as reopened_logs:
        reopened = store.read_models()  # upgraded once: kept as it is from now on
    try:
        assert reopened.runners[MessageHistory.name].checkpoint() == last
        assert history(reopened, cid) == messages
    finally:
        reopened.close()

    assert [(m.content, len(m.tool_calls or [])) for m in messages] == [("q", 0), ("a", 1)]
    assert schema_changes(logs) == [(MessageHistory.name, 1, MessageHistory.schema.version)]
    assert schema_changes(reopened_logs) == []


def schema_changes(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, int, int]]:
    return [
        (entry["projection"], entry["old"], entry["new"])
        for entry in logs
        if entry["event"] == "projection.schema_changed"
    ]


def test_a_read_model_whose_schema_is_current_keeps_its_rows_and_checkpoint(
    store: Store,
) -> None:
    cid = start_conversation(store.service)
    ask(store.service, cid, "q")
    with capture_logs() as logs:
        first = caught_up(store.read_models())  # new read models: nothing to upgrade
        checkpoints = {name: runner.checkpoint() for name, runner in first.runners.items()}
        first.close()
        second = store.read_models()
    try:
        assert {name: r.checkpoint() for name, r in second.runners.items()} == checkpoints
        assert [m.content for m in history(second, cid)] == ["q", "ok"]
    finally:
        second.close()
    assert schema_changes(logs) == []


def test_a_runner_behind_the_store_logs_its_lag_until_it_has_caught_up(
    store: Store, read_models: ReadModels
) -> None:
    for _ in range(3):
        ask(store.service, start_conversation(store.service), "q")
    last = store.service.recorder.max_notification_id() or 0
    runner = ProjectionRunner(
        store.service,
        RunStats(),
        read_models.view(RunStats.name),
        batch_size=2,
        progress_seconds=0,
    )

    with capture_logs() as logs:
        runner.start()
        try:
            assert runner.wait(last, timeout=10)
            assert _eventually(lambda: any(line["caught_up"] for line in _progress(logs)))
        finally:
            runner.stop()

    *behind, done = _progress(logs)
    assert behind, "no line while behind"
    for line in behind:
        assert (line["projection"], line["store_position"], line["caught_up"]) == (
            RunStats.name,
            last,
            False,
        )
        assert line["lag"] == last - line["position"] > 0
    assert (done["position"], done["lag"], done["caught_up"]) == (last, 0, True)


def _progress(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "projection.progress"]


def _eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
