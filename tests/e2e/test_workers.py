"""Scaled out: the API queues runs, `threadlog worker` processes execute them.

Every process here is a real `threadlog` OS process on PostgreSQL and NATS; a worker
is killed with SIGKILL mid-run and another one takes the run over when its lease
runs out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import NatsNames, delete_stream
from tests.support import (
    ADMIN_KEY,
    LiveServer,
    SSEEvent,
    create_conversation,
    parse_sse,
    post_message,
    stored_events,
)
from threadlog.infra.embedded import free_port
from threadlog.infra.nats import StreamNames
from threadlog.infra.settings import Settings

THREADLOG = Path(sys.executable).parent / "threadlog"
LEASE_SECONDS = "2"
START_SECONDS = 60
ENDINGS = {"RunCompleted", "RunFailed", "RunCancelled"}


class ThreadlogProcess:
    """One `threadlog` command in its own OS process, logging JSON lines to a file."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(THREADLOG), command], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def logged(self, event: str, **fields: Any) -> bool:
        return any(
            record.get("event") == event and all(record.get(k) == v for k, v in fields.items())
            for record in self.log_records()
        )

    def running(self) -> bool:
        return self.logged("worker.running")

    def wait_until(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text())
            if time.monotonic() > deadline:
                raise TimeoutError(self.log.read_text())
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """An API process and worker processes sharing one database and one NATS."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self._tmp_path = tmp_path
        self._env = env
        self.processes: list[ThreadlogProcess] = []
        self.base_url = ""

    def _start(self, command: str, name: str, **env: str) -> ThreadlogProcess:
        data_dir = self._tmp_path / name
        data_dir.mkdir()
        full_env = {**self._env, "THREADLOG_DATA_DIR": str(data_dir), **env}
        process = ThreadlogProcess(command, full_env, self._tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def start_api(self) -> ThreadlogProcess:
        """Ready before any worker starts: it creates the database's tables."""
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        api = self._start("serve", "api", THREADLOG_PORT=str(port))
        api.wait_until(self._api_ready)
        return api

    def start_worker(self, name: str) -> ThreadlogProcess:
        return self._start("worker", name)

    def wait_ready(self) -> None:
        for process in self.processes:
            if process.command == "worker":
                process.wait_until(process.running)

    def _api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(30.0), headers={"X-API-Key": ADMIN_KEY}
        )

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def cluster_env(
    database_url: str, nats_url: str, nats_names: NatsNames
) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLOG_")}
    env.update(
        THREADLOG_DATABASE_URL=database_url,
        THREADLOG_NATS_URL=nats_url,
        THREADLOG_NATS_STREAM=nats_names.stream,
        THREADLOG_NATS_SUBJECT_PREFIX=nats_names.subject_prefix,
        THREADLOG_WORKERS="true",
        THREADLOG_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY,
        THREADLOG_WORKER_LEASE_SECONDS=LEASE_SECONDS,
        THREADLOG_DEMO_TOKEN_DELAY_MS="5",
        THREADLOG_SSE_HEARTBEAT_SECONDS="1",
        THREADLOG_LOG_FORMAT="json",
        THREADLOG_LOG_LEVEL="INFO",
    )
    yield env
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


def run_events(
    client: httpx.Client,
    conversation_id: str,
    *,
    until: Callable[[SSEEvent], bool],
    meanwhile: Callable[[SSEEvent], None] = lambda _: None,
) -> list[SSEEvent]:
    """The conversation's SSE stream from its start until `until` holds; `meanwhile`
    sees every event as it arrives (the stream stays open while it acts)."""
    received: list[SSEEvent] = []
    with client.stream(
        "GET",
        f"/v1/conversations/{conversation_id}/events",
        headers={"accept": "text/event-stream"},
    ) as response:
        assert response.status_code == 200
        for event in parse_sse(response.iter_lines()):
            received.append(event)
            meanwhile(event)
            if until(event):
                return received
    raise AssertionError("the stream closed before the run ended")


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


def assert_gapless(events: list[SSEEvent]) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1))


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
