"""Benchmark 5: cancelling a run in flight, from the request to `RunCancelled` stored.

The real app (`tests.support.LiveServer`, PostgreSQL, NATS, relay and projections
on) runs a fake model (pydantic-ai `FunctionModel`) that streams a token every
TOKEN_DELAY_SECONDS. For each of N runs: create a conversation, post a message,
wait until the run's first token is stored, then time `POST /v1/runs/{id}/cancel`
from sending it until `RunCancelled` is in the store. The route answers once the
run's task has ended, which is after it appended `RunCancelled`; the benchmark
checks the store right after the answer and, should the event not be there yet,
polls until it is and takes that moment instead.

The baseline, interleaved in the same run, is the round trip of the cheapest
request the app serves (`GET /health/`).
"""

import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.access import served
from bench.measure import Sample, percentile, progress
from bench.servers import Servers
from tests.support import LiveServer, scripted_model
from threadlog.domain.events import RunCancelled, TokenStreamed
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import EventLog, open_service, topics_of

TOKEN_DELAY_SECONDS = 0.02
TOKENS = 5_000  # 100 s of streaming: every run is cancelled long before its end
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.001


@dataclass(frozen=True, kw_only=True)
class CancelConfig:
    runs: int


@dataclass(frozen=True, kw_only=True)
class CancelResult:
    config: CancelConfig
    cancel_ms: Sample  # request sent → RunCancelled stored, per run
    baseline_ms: Sample  # GET /health/ round trip, one per run
    stored_after_answer: int  # runs whose RunCancelled was not yet stored at the answer

    def cancel_percentile(self, q: float) -> float:
        return percentile(self.cancel_ms.values, q)

    def baseline_percentile(self, q: float) -> float:
        return percentile(self.baseline_ms.values, q)

    @property
    def ratio(self) -> float:
        return self.cancel_ms.median / self.baseline_ms.median


def run_cancel(servers: Servers, config: CancelConfig) -> CancelResult:
    url = servers.databases.create()
    service = open_service(Settings(database_url=url))
    token = secrets.token_hex(6)
    try:
        with tempfile.TemporaryDirectory(prefix="threadlog-bench-") as data_dir:
            settings = Settings(
                data_dir=Path(data_dir),
                database_url=url,
                nats_url=servers.nats_url,
                nats_stream=f"BENCH_{token}",
                nats_subject_prefix=f"b{token}",
                log_level="WARNING",
                log_format="json",
            )
            model = scripted_model([f" t{i}" for i in range(TOKENS)], delay=TOKEN_DELAY_SECONDS)
            try:
                with LiveServer(served(settings), model) as server, server.client() as client:
                    return _measure(client, EventLog(service), config)
            finally:
                servers.release_stream(settings.nats_stream)
    finally:
        service.close()
        servers.databases.drop(url)


def _measure(client: httpx.Client, event_log: EventLog, config: CancelConfig) -> CancelResult:
    cancels: list[float] = []
    baselines: list[float] = []
    late = 0
    _baseline(client)  # warm-up
    for run in range(config.runs + 1):
        if run:
            progress(f"cancel: run {run}/{config.runs}")
        milliseconds, stored_late = _cancel_one(client, event_log)
        baseline = _baseline(client)
        if run == 0:
            continue  # the warm-up run
        cancels.append(milliseconds)
        baselines.append(baseline)
        late += int(stored_late)
    return CancelResult(
        config=config,
        cancel_ms=Sample.of(cancels),
        baseline_ms=Sample.of(baselines),
        stored_after_answer=late,
    )


def _baseline(client: httpx.Client) -> float:
    started = time.perf_counter()
    client.get("/health/").raise_for_status()
    return (time.perf_counter() - started) * 1000


def _cancel_one(client: httpx.Client, event_log: EventLog) -> tuple[float, bool]:
    """Milliseconds from the cancel request to RunCancelled stored, and whether it was
    stored only after the answer."""
    created = client.post("/v1/conversations", json={"title": "cancel bench"})
    created.raise_for_status()
    conversation_id = uuid.UUID(created.json()["id"])
    posted = client.post(
        f"/v1/conversations/{conversation_id}/messages", json={"content": "Go on."}
    )
    posted.raise_for_status()
    run_id = posted.json()["run_id"]
    _wait_for(event_log, conversation_id, topics_of(TokenStreamed))
    started = time.perf_counter()
    answer = client.post(f"/v1/runs/{run_id}/cancel")
    answered = time.perf_counter()
    answer.raise_for_status()
    if event_log.read(conversation_id, topics=topics_of(RunCancelled)):
        return (answered - started) * 1000, False
    _wait_for(event_log, conversation_id, topics_of(RunCancelled))
    return (time.perf_counter() - started) * 1000, True


def _wait_for(event_log: EventLog, conversation_id: uuid.UUID, topics: tuple[str, ...]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not event_log.read(conversation_id, topics=topics, limit=1):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {topics} in conversation {conversation_id}")
        time.sleep(POLL_SECONDS)
