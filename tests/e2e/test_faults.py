"""Faults while runs stream: a killed API process, a killed worker, NATS and PostgreSQL
restarted under a scaled-out cluster of real `threadlog` OS processes.

The test owns both servers (an embedded PostgreSQL and a nats-server it stops and
starts again). After each fault the cluster must converge on its own: every
conversation's positions run 1..n, every run ends exactly once, the JetStream stream
holds each stored event exactly once, SSE clients that reconnect with Last-Event-ID
get every event once and in order, and /health/ready answers 200 again. While a
dependency is down the API answers within seconds (503 with Retry-After where it
cannot serve), never a hang or a 500.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster, ThreadlogProcess, cluster_environment
from tests.e2e.test_relay import stream_contents
from tests.servers import (
    NatsNames,
    OwnedPostgres,
    ScratchDatabases,
    owned_postgres_server,
    run_async,
)
from tests.support import ADMIN_KEY, SSEEvent, create_conversation, parse_sse, stored_events
from threadlog.infra.stream.embedded import EmbeddedNats
from threadlog.infra.stream.nats import StreamNames

RUN_ENDINGS = {"RunCompleted", "RunFailed", "RunCancelled"}
RECOVERY_SECONDS = 30
# Long enough for a request that waits on the store's pool (5 s), far below a hang.
OUTAGE_ANSWER_SECONDS = 12
# NATS down costs a request nothing it must wait for (the rate limiter once waited 10 s).
NATS_OUTAGE_ANSWER_SECONDS = 5
CONVERSATIONS = 2


@pytest.fixture(scope="module")
def postgres() -> Iterator[OwnedPostgres]:
    with owned_postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path_factory.mktemp("faults-nats")) as server:
        yield server


@dataclass
class Faulty:
    """The cluster under test, on servers the test owns, and its NATS stream's names."""

    cluster: Cluster
    names: StreamNames
    nats: EmbeddedNats
    postgres: OwnedPostgres

    def workers(self) -> list[ThreadlogProcess]:
        return [p for p in self.cluster.processes if p.command == "worker" and p.alive()]

    def heal(self, workers: int = 1) -> None:
        """Every server up, an API and `workers` workers (a test may have left one down)."""
        if not self.nats.running:
            self.nats.start()
        self.postgres.start()
        cluster = self.cluster
        if not any(p.command == "serve" and p.alive() for p in cluster.processes):
            cluster.start_api(wait=False)
        while len(self.workers()) < workers:
            cluster.start_worker(f"worker-{len(cluster.processes)}")
        cluster.wait_ready()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: OwnedPostgres, nats_server: EmbeddedNats
) -> Iterator[Faulty]:
    """One cluster for the module (starting processes is most of the cost): an API and
    two workers (the first test to kill one leaves one). Each test streams runs in
    conversations of its own."""
    databases = ScratchDatabases(postgres.url)
    names = NatsNames.new()
    environment = cluster_environment(
        databases.create(),
        nats_server.url,
        names,
        THREADLOG_DEMO_TOKEN_DELAY_MS="40",
        THREADLOG_WORKER_LEASE_SECONDS="2",
        THREADLOG_RUN_MAX_RETRIES="1",
        # On: the limiter counts in NATS and must not stall requests without it.
        THREADLOG_RATE_LIMIT_PER_KEY="100000",
        THREADLOG_RATE_LIMIT_PER_IP="0",
    )
    stream = StreamNames(stream=names.stream, prefix=names.subject_prefix)
    faulty = Faulty(
        Cluster(tmp_path_factory.mktemp("cluster"), environment), stream, nats_server, postgres
    )
    faulty.heal(workers=2)
    try:
        yield faulty
    finally:
        faulty.cluster.stop_all()
        faulty.postgres.start()
        databases.drop_all()


@pytest.fixture
def faulty(cluster: Faulty) -> Faulty:
    cluster.heal()
    return cluster


def ends(event: SSEEvent | dict[str, Any]) -> bool:
    """The event is a run's one ending (a RunInterrupted that retries is not)."""
    if isinstance(event, SSEEvent):
        kind, data = event.event, event.data["data"]
    else:
        kind, data = event["type"], event["data"]
    return kind in RUN_ENDINGS or (kind == "RunInterrupted" and not data["retry"])


@dataclass
class ResumingReader:
    """An SSE client of one conversation that reconnects with Last-Event-ID after any
    break (a dropped connection, a final `event: error`, a 503) until its run ends."""

    base_url: str
    conversation_id: str
    run_id: str
    events: list[SSEEvent] = field(default_factory=list)
    reconnects: int = 0
    # Each refused reconnect's status and Retry-After.
    refusals: list[tuple[int, str | None]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ResumingReader:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def tokens(self) -> int:
        return sum(1 for e in self.events if e.event == "TokenStreamed")

    def _read(self) -> None:
        deadline = time.monotonic() + 90
        url = f"{self.base_url}/v1/conversations/{self.conversation_id}/events"
        while time.monotonic() < deadline:
            headers = {"accept": "text/event-stream", "X-API-Key": ADMIN_KEY}
            if self.events:
                headers["Last-Event-ID"] = str(self.events[-1].id)
            try:
                with httpx.stream("GET", url, headers=headers, timeout=5) as response:
                    if response.status_code != 200:
                        refusal = (response.status_code, response.headers.get("retry-after"))
                        self.refusals.append(refusal)
                    for event in parse_sse(response.iter_lines()):
                        self.events.append(event)
                        if ends(event) and event.data["data"]["run_id"] == self.run_id:
                            self.done.set()
                            return
            except httpx.TransportError:
                pass
            self.reconnects += 1
            time.sleep(0.2)

    def wait(self) -> list[SSEEvent]:
        assert self.done.wait(RECOVERY_SECONDS * 2), f"the run did not end: {self.events[-3:]}"
        return self.events


def start_runs(cluster: Cluster, client: httpx.Client) -> list[ResumingReader]:
    readers = []
    for index in range(CONVERSATIONS):
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"content": f"conversation {index} keeps streaming through the fault"},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        readers.append(ResumingReader(cluster.base_url, conversation_id, run_id).start())
    return readers


def wait_for(condition: Callable[[], bool], what: str, seconds: float = RECOVERY_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def streaming(readers: list[ResumingReader], tokens: int = 3) -> None:
    wait_for(lambda: all(r.tokens() >= tokens for r in readers), "every run streams")


def assert_runs_end_once(events: list[dict[str, Any]]) -> None:
    """Each run: RunStarted, then (RunInterrupted(retry) RunStarted)*, then one ending."""
    lives: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["type"] in {"RunStarted", "RunInterrupted", *RUN_ENDINGS}:
            lives[event["data"]["run_id"]].append(event)
    posted = {e["data"]["run_id"] for e in events if e["type"] == "MessagePosted"}
    assert set(lives) == posted
    for run_id, life in lives.items():
        kinds = [e["type"] for e in life]
        assert kinds[0] == "RunStarted", (run_id, kinds)
        assert [ends(e) for e in life].count(True) == 1, (run_id, kinds)
        assert ends(life[-1]), (run_id, kinds)
        for retried, after in itertools.pairwise(life):
            if retried["type"] == "RunInterrupted":
                assert retried["data"]["retry"] and after["type"] == "RunStarted", kinds


def stream_rows(faulty: Faulty) -> list[tuple[str, int, int]]:
    return run_async(stream_contents(faulty.nats.url, faulty.names))


def assert_converged(faulty: Faulty, readers: list[ResumingReader]) -> list[list[dict[str, Any]]]:
    """The invariants every fault must leave intact, once the cluster has recovered."""
    cluster = faulty.cluster
    wait_for(cluster.api_ready, "/health/ready answers 200")
    for reader in readers:
        reader.wait()
    with cluster.client() as client:
        stored = [stored_events(client, r.conversation_id) for r in readers]
    for events, reader in zip(stored, readers, strict=True):
        assert set(reader.refusals) <= {(503, "1")}, reader.refusals  # never an error
        assert [e["position"] for e in events] == list(range(1, len(events) + 1))
        assert_runs_end_once(events)
        # The reconnecting client got every event once, in order, and nothing else.
        assert [(e.id, e.event) for e in reader.events] == [
            (e["position"], e["type"]) for e in events
        ]
    expected = sorted(
        ((e["id"], e["position"], e["global_position"]) for events in stored for e in events),
        key=lambda row: row[2],
    )
    ids = {row[0] for row in expected}

    def relayed() -> list[tuple[str, int, int]]:
        return [row for row in stream_rows(faulty) if row[0] in ids]

    wait_for(lambda: len(relayed()) >= len(expected), "the relay catches up")
    assert relayed() == expected
    return stored


def answers_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"


def completed(events: list[dict[str, Any]]) -> bool:
    return bool(events[-1]["type"] == "RunCompleted")


def test_a_killed_api_process_restarts_and_every_stream_resumes_where_it_broke(
    faulty: Faulty,
) -> None:
    cluster = faulty.cluster
    with cluster.client() as client:
        readers = start_runs(cluster, client)
    streaming(readers)
    [api] = [p for p in cluster.processes if p.command == "serve" and p.alive()]
    api.kill()
    # The workers keep writing the runs' events; nobody relays them until the API is back.
    cluster.start_api()
    stored = assert_converged(faulty, readers)
    assert all(completed(events) for events in stored)
    assert all(r.reconnects >= 1 for r in readers)


def holder_of(workers: list[ThreadlogProcess], run_id: str) -> ThreadlogProcess:
    [taken] = [w for w in workers if w.logged("worker.run_taken", run_id=run_id, delivered=1)]
    return taken


def test_a_killed_worker_s_runs_are_retried_and_every_event_is_relayed_once(
    faulty: Faulty,
) -> None:
    faulty.heal(workers=2)  # one to kill, one to take its runs over
    cluster = faulty.cluster
    with cluster.client() as client:
        readers = start_runs(cluster, client)
    streaming(readers)
    victim = holder_of(faulty.workers(), readers[0].run_id)
    victim.kill()
    stored = assert_converged(faulty, readers)
    assert all(completed(events) for events in stored)
    lost = [e for events in stored for e in events if e["type"] == "RunInterrupted"]
    assert readers[0].run_id in {e["data"]["run_id"] for e in lost}
    assert all((e["data"]["reason"], e["data"]["retry"]) == ("worker_lost", True) for e in lost)


def test_while_nats_is_down_the_api_answers_at_once_and_recovers_when_it_returns(
    faulty: Faulty,
) -> None:
    cluster = faulty.cluster
    with cluster.client() as client:
        readers = start_runs(cluster, client)
        streaming(readers)
        faulty.nats.stop()
        client.timeout = httpx.Timeout(NATS_OUTAGE_ANSWER_SECONDS)
        wait_for(lambda: client.get("/health/ready").status_code == 503, "readiness fails")
        answers_unavailable(client.get("/health/ready"))
        conversation_id = readers[0].conversation_id
        page = client.get(
            f"/v1/conversations/{conversation_id}/events", headers={"accept": "application/json"}
        )
        assert page.status_code == 200  # the store still serves what it holds
        answers_unavailable(
            client.post(f"/v1/conversations/{conversation_id}/messages", json={"content": "x"})
        )
        faulty.nats.start()
    stored = assert_converged(faulty, readers)
    assert all(completed(events) for events in stored)


def test_while_postgresql_restarts_the_api_answers_503_and_the_runs_carry_on(
    faulty: Faulty,
) -> None:
    cluster = faulty.cluster
    with cluster.client() as client:
        readers = start_runs(cluster, client)
        streaming(readers)
        faulty.postgres.stop()
        client.timeout = httpx.Timeout(OUTAGE_ANSWER_SECONDS)
        conversation_id = readers[0].conversation_id
        answers_unavailable(client.get("/health/ready"))
        answers_unavailable(
            client.get(
                f"/v1/conversations/{conversation_id}/events",
                headers={"accept": "application/json"},
            )
        )
        answers_unavailable(
            client.post(f"/v1/conversations/{conversation_id}/messages", json={"content": "x"})
        )
        faulty.postgres.start()
    stored = assert_converged(faulty, readers)
    # Paused by the outage, not failed: the writer waits for the store to come back.
    assert all(completed(events) for events in stored)
