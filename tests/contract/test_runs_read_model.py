"""The `runs` read model on SQLite and PostgreSQL: histories go in through the
Conversation aggregate, the projection runner builds the rows a reader sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from tests.backends import BACKENDS, database_url_for
from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation, PostedMessage
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service, store_environment
from threadlog.projections.read_models import ReadModels
from threadlog.projections.runs import Run, RunQuery, Runs, all_runs, get_run, list_runs
from threadlog.projections.views import to_micros

USER = Cause(actor="user:alice", correlation_id="req-1")
AGENT = Cause(actor="agent:helper", correlation_id="req-1")


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))


@pytest.fixture
def service(settings: Settings) -> Iterator[ConversationService]:
    opened = open_service(settings)
    yield opened
    opened.close()


@pytest.fixture
def read_models(service: ConversationService, settings: Settings) -> Iterator[ReadModels]:
    models = ReadModels.open(
        service, store_environment(settings), settings.read_models_dir, names=(Runs.name,)
    )
    yield models
    models.close()


def start(service: ConversationService, busy_policy: str = "reject") -> UUID:
    return service.start_conversation(
        owner="alice", agent="helper", title="t", metadata={}, cause=USER, busy_policy=busy_policy
    ).value.id


def post(service: ConversationService, conversation_id: UUID, content: str) -> PostedMessage:
    return service.post_message(
        conversation_id, content=content, client_message_id=None, model="scripted", cause=USER
    ).value


def complete(live: Conversation, run_id: str, reply: str, output: object = None) -> None:
    live.complete_message(
        run_id=run_id, content=reply, model_messages="[]", cause=AGENT, output=output
    )
    live.complete_run(
        run_id=run_id,
        usage={"input_tokens": 3, "output_tokens": 2, "requests": 1},
        duration_ms=12.5,
        time_to_first_token_ms=None,
        cause=AGENT,
        cost_usd=0.25,
    )


def change(service: ConversationService, conversation_id: UUID, decide: object) -> None:
    live = service.get_conversation(conversation_id)
    assert callable(decide)
    decide(live)
    service.save(live)


def row(read_models: ReadModels, run_id: str) -> Run:
    read_models.runners[Runs.name].catch_up()
    with read_models.view(Runs.name).read() as sql:
        found = get_run(sql, run_id)
    assert found is not None
    return found


def test_a_completed_run_has_its_reply_output_usage_cost_and_times(
    service: ConversationService, read_models: ReadModels
) -> None:
    cid = start(service)
    posted = post(service, cid, "question")
    change(service, cid, lambda c: complete(c, posted.run_id, "answer", {"n": 42}))

    run = row(read_models, posted.run_id)

    conversation = service.get_conversation(cid)
    assert (run.conversation_id, run.owner, run.agent, run.model) == (
        str(cid),
        "alice",
        "helper",
        "scripted",
    )
    assert (run.status, run.attempt, run.message_id) == ("completed", 1, posted.message_id)
    assert (run.content, run.output, run.cost_usd, run.duration_ms) == (
        "answer",
        {"n": 42},
        0.25,
        12.5,
    )
    assert run.usage == {"input_tokens": 3, "output_tokens": 2, "requests": 1}
    assert run.reply_message_id is not None and run.error is None
    assert run.started_at is not None and run.ended_at is not None
    assert run.created_at <= run.started_at <= run.ended_at
    assert run.ended_at == conversation.modified_on and run.position == conversation.version


def test_a_queued_run_is_queued_until_its_run_starts(
    service: ConversationService, read_models: ReadModels
) -> None:
    cid = start(service, busy_policy="enqueue")
    first = post(service, cid, "first")
    second = post(service, cid, "second")

    queued = row(read_models, second.run_id)
    assert (queued.status, queued.attempt, queued.started_at, queued.model) == (
        "queued",
        0,
        None,
        None,
    )

    change(service, cid, lambda c: complete(c, first.run_id, "done"))
    started = row(read_models, second.run_id)
    assert (started.status, started.attempt, started.model) == ("running", 1, "scripted")
    assert started.started_at is not None and started.started_at > started.created_at


def test_progress_shows_the_latest_percent_and_note(
    service: ConversationService, read_models: ReadModels
) -> None:
    cid = start(service)
    posted = post(service, cid, "long job")
    for percent, note in ((10.0, "reading"), (55.5, "writing")):
        change(
            service,
            cid,
            lambda c, p=percent, n=note: c.report_progress(
                run_id=posted.run_id, percent=p, note=n, cause=AGENT
            ),
        )

    run = row(read_models, posted.run_id)
    assert (run.status, run.progress, run.note) == ("running", 55.5, "writing")


def test_a_retried_run_is_its_second_attempt_running_again(
    service: ConversationService, read_models: ReadModels
) -> None:
    cid = start(service)
    posted = post(service, cid, "job")
    change(
        service,
        cid,
        lambda c: c.report_progress(run_id=posted.run_id, percent=80, note="nearly", cause=AGENT),
    )
    change(
        service,
        cid,
        lambda c: c.interrupt_run(
            run_id=posted.run_id, reason="worker lost", retry=True, cause=AGENT
        ),
    )

    retried = row(read_models, posted.run_id)
    assert (retried.status, retried.attempt, retried.progress, retried.ended_at) == (
        "running",
        2,
        None,
        None,
    )
    change(service, cid, lambda c: complete(c, posted.run_id, "after retry"))
    assert row(read_models, posted.run_id).status == "completed"


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        (
            lambda c, r: c.fail_run(run_id=r, error="model_error", message="safe", cause=AGENT),
            ("failed", "model_error", "safe", None, None),
        ),
        (
            lambda c, r: c.cancel_run(
                run_id=r, reason="requested", partial_content="par", cause=AGENT
            ),
            ("cancelled", None, None, "requested", "par"),
        ),
        (
            lambda c, r: c.interrupt_run(run_id=r, reason="worker lost", retry=False, cause=AGENT),
            ("interrupted", "interrupted", "worker lost", None, None),
        ),
    ],
    ids=["failed", "cancelled", "interrupted"],
)
def test_a_run_that_did_not_complete_keeps_how_it_ended(
    service: ConversationService,
    read_models: ReadModels,
    ending: object,
    expected: tuple[object, ...],
) -> None:
    cid = start(service)
    posted = post(service, cid, "job")
    assert callable(ending)
    change(service, cid, lambda c: ending(c, posted.run_id))

    run = row(read_models, posted.run_id)
    assert (run.status, run.error, run.error_message, run.cancel_reason, run.content) == expected
    assert run.ended_at is not None and run.ended


def test_runs_are_listed_newest_first_by_owner_status_and_conversation(
    service: ConversationService, read_models: ReadModels
) -> None:
    one, two = start(service), start(service)
    done = post(service, one, "a")
    change(service, one, lambda c: complete(c, done.run_id, "ok"))
    running = post(service, one, "b")
    other = post(service, two, "c")
    read_models.runners[Runs.name].catch_up()

    def listed(**filters: object) -> list[str]:
        with read_models.view(Runs.name).read() as sql:
            query = RunQuery(**{"owner": "alice", "limit": 10, **filters})  # type: ignore[arg-type]
            return [run.run_id for run in list_runs(sql, query)]

    assert listed() == [other.run_id, running.run_id, done.run_id]
    assert listed(status="running") == [other.run_id, running.run_id]
    assert listed(conversation_id=str(one)) == [running.run_id, done.run_id]
    assert listed(owner="mallory") == []
    with read_models.view(Runs.name).read() as sql:
        first, second = list_runs(sql, RunQuery(owner="alice", limit=2))
    assert listed(after=(to_micros(second.created_at), second.run_id)) == [done.run_id]
    assert [first.run_id, second.run_id] == [other.run_id, running.run_id]


def test_a_rebuilt_runs_read_model_equals_the_one_built_live(
    service: ConversationService, read_models: ReadModels
) -> None:
    cid = start(service, busy_policy="enqueue")
    first, second = post(service, cid, "a"), post(service, cid, "b")
    change(service, cid, lambda c: complete(c, first.run_id, "ok"))
    change(
        service,
        cid,
        lambda c: c.interrupt_run(run_id=second.run_id, reason="lost", retry=True, cause=AGENT),
    )
    runner = read_models.runners[Runs.name]
    runner.catch_up()
    with read_models.view(Runs.name).read() as sql:
        live = all_runs(sql)
    runner.rebuild()
    with read_models.view(Runs.name).read() as sql:
        rebuilt = all_runs(sql)
    assert rebuilt == live and len(live) == 2
