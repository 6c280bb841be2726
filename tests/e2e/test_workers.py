"""Scaled out: the API queues runs, `threadlog worker` processes execute them.

Every process here is a real `threadlog` OS process on PostgreSQL and NATS; a worker
is killed with SIGKILL mid-run and another one takes the run over when its lease
runs out.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import (
    ENDINGS,
    Cluster,
    ThreadlogProcess,
    assert_gapless,
    cluster_environment,
    run_events,
)
from tests.servers import NatsNames, delete_stream
from tests.support import (
    LiveServer,
    SSEEvent,
    create_conversation,
    post_message,
    stored_events,
)
from threadlog.infra.settings import Settings
from threadlog.infra.stream.nats import StreamNames

LEASE_SECONDS = "2"


@pytest.fixture
def cluster_env(
    database_url: str, nats_url: str, nats_names: NatsNames
) -> Iterator[dict[str, str]]:
    yield cluster_environment(
        database_url, nats_url, nats_names, THREADLOG_WORKER_LEASE_SECONDS=LEASE_SECONDS
    )
    names = StreamNames(stream=nats_names.stream, prefix=nats_names.subject_prefix)
    delete_stream(nats_url, names.run_queue_stream)


@pytest.fixture
def make_cluster(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[Callable[..., Cluster]]:
    """Builds a cluster with changed settings; every process it started is stopped after."""
    clusters: list[Cluster] = []

    def make(**env: str) -> Cluster:
        cluster = Cluster(tmp_path, {**cluster_env, **env})
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()


def holder(workers: list[ThreadlogProcess], run_id: str) -> ThreadlogProcess:
    [taken] = [w for w in workers if w.logged("worker.run_taken", run_id=run_id)]
    return taken


def kill_holder_after_tokens(
    workers: list[ThreadlogProcess], run_id: str, tokens: int
) -> Callable[[SSEEvent], None]:
    seen: list[SSEEvent] = []

    def act(event: SSEEvent) -> None:
        if event.event == "TokenStreamed" and event.data["data"]["run_id"] == run_id:
            seen.append(event)
            if len(seen) == tokens:
                holder(workers, run_id).kill()

    return act


def test_the_api_queues_a_run_and_a_worker_executes_it(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    api = cluster.start_api()
    worker = cluster.start_worker("worker")
    cluster.wait_ready()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages?wait=true",
            json={"content": "hello worker"},
        )
        assert response.status_code == 200, response.text
        result = response.json()
        events = run_events(client, conversation_id, until=lambda e: e.event in ENDINGS)
    assert result["status"] == "completed"
    assert "hello worker" in result["reply"]
    assert [e.event for e in events][:2] == ["ConversationStarted", "MessagePosted"]
    assert events[-1].event == "RunCompleted"
    assert_gapless(events)
    assert worker.logged("worker.run_taken", run_id=result["run_id"], delivered=1)
    assert not api.logged("run.completed")


def test_a_run_whose_worker_is_killed_is_interrupted_and_retried_by_another(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(THREADLOG_DEMO_TOKEN_DELAY_MS="60", THREADLOG_RUN_MAX_RETRIES="1")
    cluster.start_api()
    workers = [cluster.start_worker("worker-a"), cluster.start_worker("worker-b")]
    cluster.wait_ready()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "survive a crash")["run_id"]
        events = run_events(
            client,
            conversation_id,
            until=lambda e: e.event in ENDINGS,
            meanwhile=kill_holder_after_tokens(workers, run_id, tokens=3),
        )
        stored = stored_events(client, conversation_id)
    types = [e.event for e in events]
    interrupted = types.index("RunInterrupted")
    assert types.count("RunStarted") == 2
    assert types.index("RunStarted") < types.index("TokenStreamed") < interrupted
    assert types[interrupted + 1] == "RunStarted"
    assert types[-2:] == ["MessageCompleted", "RunCompleted"]
    assert events[interrupted].data["data"] == {
        "run_id": run_id,
        "reason": "worker_lost",
        "retry": True,
    }
    assert {e.data["data"]["run_id"] for e in events if e.event == "RunStarted"} == {run_id}
    assert "survive a crash" in events[-2].data["data"]["content"]
    assert_gapless(events)
    assert [e["type"] for e in stored] == types
    assert sum(1 for t in types if t in ENDINGS) == 1


def test_a_stalled_worker_that_wakes_after_the_retry_began_writes_nothing_more(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(THREADLOG_DEMO_TOKEN_DELAY_MS="60", THREADLOG_RUN_MAX_RETRIES="1")
    cluster.start_api()
    workers = [cluster.start_worker("worker-a"), cluster.start_worker("worker-b")]
    cluster.wait_ready()
    stalled: list[ThreadlogProcess] = []
    retried_tokens: list[SSEEvent] = []

    def stall_then_wake(event: SSEEvent) -> None:
        if event.event == "TokenStreamed" and not stalled:
            stalled.append(holder(workers, run_id))
            stalled[0].process.send_signal(signal.SIGSTOP)  # alive, but its lease runs out
        elif event.event == "TokenStreamed" and "RunInterrupted" in seen:
            retried_tokens.append(event)
            if len(retried_tokens) == 3:
                stalled[0].process.send_signal(signal.SIGCONT)
        seen.add(event.event)

    seen: set[str] = set()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "do not write twice")["run_id"]
        try:
            run_events(
                client,
                conversation_id,
                until=lambda e: e.event in ENDINGS,
                meanwhile=stall_then_wake,
            )
        finally:
            if stalled:
                stalled[0].process.send_signal(signal.SIGCONT)
        stalled[0].stop()  # it exits once its run's task has written all it tries to
        events = stored_events(client, conversation_id)
    types = [e["type"] for e in events]
    assert types.count("RunInterrupted") == 1
    retry = types.index("RunInterrupted") + 1
    assert types[retry] == "RunStarted"
    after_retry = events[retry + 1 :]
    assert [e["type"] for e in after_retry[-2:]] == ["MessageCompleted", "RunCompleted"]
    tokens = [e["data"]["delta"] for e in after_retry if e["type"] == "TokenStreamed"]
    assert "".join(tokens) == after_retry[-2]["data"]["content"]
    assert sum(1 for t in types if t in ENDINGS) == 1


def test_without_retries_a_lost_run_ends_interrupted_and_the_next_message_runs(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(THREADLOG_DEMO_TOKEN_DELAY_MS="60", THREADLOG_RUN_MAX_RETRIES="0")
    cluster.start_api()
    workers = [cluster.start_worker("worker-a"), cluster.start_worker("worker-b")]
    cluster.wait_ready()
    with cluster.client() as client:
        conversation_id = create_conversation(client, busy_policy="enqueue")
        lost = post_message(client, conversation_id, "lost")["run_id"]
        queued = post_message(client, conversation_id, "next in line")
        assert queued["queued"] is True
        events = run_events(
            client,
            conversation_id,
            until=lambda e: e.event in ENDINGS and e.data["data"]["run_id"] == queued["run_id"],
            meanwhile=kill_holder_after_tokens(workers, lost, tokens=3),
        )
    endings = [e for e in events if e.event in ENDINGS | {"RunInterrupted"}]
    assert [(e.event, e.data["data"]["run_id"]) for e in endings] == [
        ("RunInterrupted", lost),
        ("RunCompleted", queued["run_id"]),
    ]
    assert endings[0].data["data"]["retry"] is False
    started = [e.data["data"]["run_id"] for e in events if e.event == "RunStarted"]
    assert started == [lost, queued["run_id"]]
    assert_gapless(events)


def test_the_api_cancels_a_run_executing_in_a_worker(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(THREADLOG_DEMO_TOKEN_DELAY_MS="60")
    cluster.start_api()
    cluster.start_worker("worker")
    cluster.wait_ready()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "stop me")["run_id"]
        answers: list[httpx.Response] = []

        def cancel_after_first_token(event: SSEEvent) -> None:
            if event.event == "TokenStreamed" and not answers:
                answers.append(client.post(f"/v1/runs/{run_id}/cancel"))

        events = run_events(
            client,
            conversation_id,
            until=lambda e: e.event in ENDINGS,
            meanwhile=cancel_after_first_token,
        )
    assert answers[0].status_code == 202, answers[0].text
    assert events[-1].event == "RunCancelled"
    assert events[-1].data["data"]["run_id"] == run_id
    assert "MessageCompleted" not in [e.event for e in events]
    assert_gapless(events)


def test_a_run_the_queue_cannot_take_fails_and_says_so(
    make_settings: Callable[..., Settings], nats_url: str
) -> None:
    settings = make_settings(workers=True)
    with LiveServer(settings) as server, server.client() as client:
        names = StreamNames(stream=settings.nats_stream, prefix=settings.nats_subject_prefix)
        delete_stream(nats_url, names.run_queue_stream)
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "nobody takes this")["run_id"]
        events = run_events(client, conversation_id, until=lambda e: e.event in ENDINGS)
        again = post_message(client, conversation_id, "the conversation is free again")
    assert [e.event for e in events][-1] == "RunFailed"
    assert events[-1].data["data"]["run_id"] == run_id
    assert events[-1].data["data"]["error"] == "run_not_queued"
    assert again["queued"] is False


def test_a_stopped_worker_finishes_its_run_before_it_exits(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(THREADLOG_DEMO_TOKEN_DELAY_MS="40", THREADLOG_WORKER_DRAIN_SECONDS="60")
    cluster.start_api()
    worker = cluster.start_worker("worker")
    cluster.wait_ready()
    stopping: list[bool] = []

    def stop_worker_at_first_token(event: SSEEvent) -> None:
        if event.event == "TokenStreamed" and not stopping:
            stopping.append(True)
            worker.process.send_signal(signal.SIGTERM)

    with cluster.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "finish me")
        events = run_events(
            client,
            conversation_id,
            until=lambda e: e.event in ENDINGS,
            meanwhile=stop_worker_at_first_token,
        )
    assert worker.process.wait(timeout=30) == 0
    assert [e.event for e in events][-2:] == ["MessageCompleted", "RunCompleted"]
    assert "finish me" in events[-2].data["data"]["content"]
