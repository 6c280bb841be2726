"""Benchmark 6: model → client token latency under load, and its ceiling.

The real server runs as its own OS process (`threadlog serve` on PostgreSQL and
NATS, relay and read-model projections on) with the paced model
(`THREADLOG_MODEL=paced:R:T`, infra/agents/paced_model.py): each run streams T tokens at R
per second, each token's text carrying the wall-clock time it was due. A separate
process of SSE clients (`bench.sse_clients`) opens K streams per conversation
(`GET /v1/conversations/{id}/events`) over N conversations; once all follow, the
benchmark posts one message to each conversation, and the clients record, per token,
the latency from its due time to its arrival (one clock, one machine), until each
stream has seen its run's end or the deadline passes.

Each load step runs on a new database and server process. Measured per step:
latency percentiles, and where the latency accrues (the events' timestamps; a NATS
subscriber in the clients' process on the relay's JetStream subjects), tokens
delivered per second, the server's CPU seconds (per token too) and peak RSS (/proc),
PostgreSQL's committed transactions (pg_stat_database.xact_commit, per token event),
the clients' CPU, and errors (tokens missing, duplicated or out of order, runs not
ended by the deadline, HTTP errors).

The target (issue 13): the largest N whose p99 stays under SEARCH_P99_MS with no error
is at least TARGET_LARGEST_N. The target load, N conversations at R tokens/s, is
measured first; then a bounded search over a list of steps (upwards from the target
load when it holds, else upwards from the smallest step) stops at the first that
fails. A step of N = 1 is always measured (the search's own when it reaches it):
server CPU and transactions per token at N = 1 are targets too.

The ceiling, in the same run, with the same target load and search: a minimal SSE
server on the same HTTP stack that forwards NATS messages (bench/ceiling.py), the
tokens published straight to NATS by another process: no store, relay or run
executor in the path. When the target load does not hold, py-spy samples the server
through one more step of that size to show where its time goes.
"""

import asyncio
import dataclasses
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import psycopg
from psycopg.rows import TupleRow

from bench.ceiling import PublishJob
from bench.machine import load_average
from bench.measure import Sample, percentile, progress
from bench.processes import (
    ClientsProcess,
    ResourceSampler,
    ServedApp,
    ServerProcess,
    stream_of,
    threadlog_server,
)
from bench.profile import Profile, finish_sampling, start_sampling
from bench.servers import Servers
from bench.sse_clients import LoadJob, LoadOutcome, Target
from tests.support import ADMIN_KEY
from threadlog.infra.stream.embedded import free_port

SEARCH_P99_MS = 100.0
TARGET_LARGEST_N = 100  # the largest N holding SEARCH_P99_MS with no error, at least
TARGET_DELIVERED_RATIO = 0.9  # threadlog / ceiling delivered tokens/s at the target load
TARGET_CPU_MS_PER_TOKEN = 1.0  # the server's CPU per token event at N = 1, at most
TARGET_XACTS_PER_TOKEN = 1.0  # PostgreSQL commits per token event at N = 1, at most (DESIGN.md)
XACT_COMMIT = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
SETUP_CONCURRENCY = 16
POST_SLACK_SECONDS = 5.0  # posting N messages happens within the clients' deadline


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    conversations: int  # the target load's N (a row of the report; the target is the search's)
    tokens_per_second: float  # R
    clients_per_conversation: int  # K
    stream_seconds: float  # each run streams R * this many tokens
    drain_seconds: float  # after the last token is due, how long the clients wait more
    steps: tuple[int, ...]  # the search's Ns
    profile_seconds: float  # py-spy's sampling when the target is missed (0: never)

    @property
    def tokens(self) -> int:
        return max(1, round(self.tokens_per_second * self.stream_seconds))


@dataclass(frozen=True, kw_only=True)
class LoadStep:
    conversations: int
    clients: int
    tokens_per_run: int
    latency_ms: Sample | None  # one value per token received (None: none received)
    # For the same tokens, due → the event's timestamp (made by the run executor; None for
    # the ceiling, which has no store) and due → on NATS (seen by a subscriber).
    created_ms: Sample | None
    on_nats_ms: Sample | None
    delivered_per_second: float
    offered_per_second: float
    cpu_seconds: float
    wall_seconds: float
    peak_rss_bytes: int
    client_cpu_seconds: float  # the SSE clients' process, all its life
    tokens_received: int  # distinct tokens received, summed over the streams
    load_average: float | None  # the machine's (1 minute) at the step's end
    publisher_cpu_seconds: float | None = None  # the ceiling's NATS publisher process
    # PostgreSQL's committed transactions (all sessions of the step's database, reads
    # included) from just before the messages were posted to just after the clients
    # finished; None for the ceiling, which has no store.
    transactions: int | None = None
    missing: int
    duplicates: int
    out_of_order: int
    unfinished: int
    http_errors: list[str]

    def p(self, q: float) -> float:
        return percentile(self.latency_ms.values, q) if self.latency_ms else float("inf")

    @property
    def token_events(self) -> float:
        """Token events delivered: distinct tokens received, per conversation's stream."""
        return self.tokens_received / max(1, self.clients // max(1, self.conversations))

    @property
    def cpu_ms_per_token(self) -> float | None:
        return self.cpu_seconds * 1000 / self.token_events if self.token_events else None

    @property
    def transactions_per_token(self) -> float | None:
        if self.transactions is None or not self.token_events:
            return None
        return self.transactions / self.token_events

    @property
    def errors(self) -> int:
        return (self.missing + self.duplicates + self.out_of_order + self.unfinished) + len(
            self.http_errors
        )

    def holds(self, p99_ms: float) -> bool:
        return self.errors == 0 and self.p(99) < p99_ms


@dataclass(frozen=True, kw_only=True)
class Search:
    """The target load's step, then the search's steps in the order run."""

    target: LoadStep
    steps: list[LoadStep]  # the search's (the target load's not included)
    largest_holding: int | None  # the largest N that held SEARCH_P99_MS with no error
    # Steps measured outside the search: N = 1 when the search did not reach it.
    extra: list[LoadStep] = dataclasses.field(default_factory=list)

    def all_steps(self) -> list[LoadStep]:
        return [self.target, *self.steps, *self.extra]

    def at(self, n: int) -> LoadStep | None:
        return next((step for step in self.all_steps() if step.conversations == n), None)


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    config: LoadConfig
    threadlog: Search
    ceiling: Search
    profile: Profile | None  # the server at the target load, when the search missed
    profile_one: Profile | None = None  # the server at N = 1, when its CPU per token missed

    @property
    def target(self) -> LoadStep:
        """The target load's step (N = `config.conversations`)."""
        return self.threadlog.target

    @property
    def target_met(self) -> bool:
        largest = self.threadlog.largest_holding
        return largest is not None and largest >= TARGET_LARGEST_N

    @property
    def stretch_met(self) -> bool:
        """As many conversations as the NATS-only ceiling held (and at least the target)."""
        ours, theirs = self.threadlog.largest_holding, self.ceiling.largest_holding
        return self.target_met and ours is not None and ours >= (theirs or 0)

    @property
    def delivered_met(self) -> bool:
        return self.delivered_ratio >= TARGET_DELIVERED_RATIO

    @property
    def one(self) -> LoadStep | None:
        """threadlog's step of N = 1."""
        return self.threadlog.at(1)

    @property
    def cpu_met(self) -> bool:
        cpu = self.one.cpu_ms_per_token if self.one else None
        return cpu is not None and cpu <= TARGET_CPU_MS_PER_TOKEN

    @property
    def transactions_met(self) -> bool:
        per_token = self.one.transactions_per_token if self.one else None
        return per_token is not None and per_token <= TARGET_XACTS_PER_TOKEN

    @property
    def p99_ratio(self) -> float:
        return self.target.p(99) / self.ceiling.target.p(99)

    @property
    def delivered_ratio(self) -> float:
        return self.target.delivered_per_second / self.ceiling.target.delivered_per_second

    def pairs(self) -> list[tuple[LoadStep, LoadStep]]:
        """(threadlog, ceiling) steps of the same N that both ended without error, by N."""
        ceiling = {step.conversations: step for step in [self.ceiling.target, *self.ceiling.steps]}
        return sorted(
            (
                (step, ceiling[step.conversations])
                for step in self.threadlog.all_steps()
                if step.conversations in ceiling
                and step.errors == 0
                and ceiling[step.conversations].errors == 0
            ),
            key=lambda pair: pair[0].conversations,
        )


def run_load(servers: Servers, config: LoadConfig) -> LoadResult:
    def threadlog_step(
        n: int, label: str, profile_rate: int = 0
    ) -> tuple[LoadStep, Profile | None]:
        progress(f"load: {label}, {n} conversations x {config.clients_per_conversation} clients")
        measured = _fresh_server_step(servers, n, config, profile_rate=profile_rate)
        progress(f"load: {n} conversations: {_brief(measured[0])}")
        return measured

    def ceiling_step(n: int, label: str) -> LoadStep:
        progress(f"load: ceiling (NATS → SSE, no store), {label}, {n} conversations")
        with tempfile.TemporaryDirectory(prefix="threadlog-bench-ceiling-") as data_dir:
            measured = _measure_ceiling(servers, Path(data_dir), n, config)
        progress(f"load: ceiling, {n} conversations: {_brief(measured)}")
        return measured

    threadlog = _search(lambda n, label: threadlog_step(n, label)[0], config)
    if threadlog.at(1) is None:
        one = threadlog_step(1, "N = 1 (CPU and transactions per token)")[0]
        threadlog = dataclasses.replace(threadlog, extra=[one])
    profile = None
    if not threadlog.target.holds(SEARCH_P99_MS) and config.profile_seconds:
        profile = threadlog_step(config.conversations, "py-spy sampling the server", 100)[1]
    profile_one = None
    at_one = threadlog.at(1)
    cpu = at_one.cpu_ms_per_token if at_one else None
    if config.profile_seconds and (cpu is None or cpu > TARGET_CPU_MS_PER_TOKEN):
        # One stream keeps the server busy a tenth of the time: sample more often.
        profile_one = threadlog_step(1, "py-spy sampling the server at N = 1", 500)[1]
    ceiling = _search(ceiling_step, config)
    return LoadResult(
        config=config,
        threadlog=threadlog,
        ceiling=ceiling,
        profile=profile,
        profile_one=profile_one,
    )


def _search(measure: Callable[[int, str], LoadStep], config: LoadConfig) -> Search:
    """The target load's N, then the steps upwards from it when it holds, else upwards from
    the smallest step, until one fails."""
    target = measure(config.conversations, "target load")
    holds = target.holds(SEARCH_P99_MS)
    largest = target.conversations if holds else None
    steps: list[LoadStep] = []
    for n in sorted(config.steps):
        if (holds and n <= target.conversations) or (not holds and n >= target.conversations):
            continue
        measured = measure(n, "search")
        steps.append(measured)
        if not measured.holds(SEARCH_P99_MS):
            break
        largest = n
    return Search(target=target, steps=steps, largest_holding=largest)


def _fresh_server_step(
    servers: Servers, n: int, config: LoadConfig, *, profile_rate: int
) -> tuple[LoadStep, Profile | None]:
    """One step on a new database and server process: an overloaded step leaves a
    backlog (runs still streaming, events not yet relayed) that must not load the next."""
    url = servers.databases.create()
    try:
        with tempfile.TemporaryDirectory(prefix="threadlog-bench-load-") as data_dir:
            model = f"paced:{config.tokens_per_second:g}:{config.tokens}"
            server = threadlog_server(servers, url, Path(data_dir), MODEL=model)
            try:
                app = server.start("/health/ready")
                return _threadlog_step(app, url, n, config, profile_rate=profile_rate)
            finally:
                server.kill()
                servers.release_stream(stream_of(server))
    finally:
        servers.databases.drop(url)


def _brief(step: LoadStep) -> str:
    return (
        f"p50 {step.p(50):.1f} ms, p99 {step.p(99):.1f} ms, "
        f"{step.delivered_per_second:,.0f} tokens/s, {step.errors} errors"
    )


def headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}


def _threadlog_step(
    app: ServedApp, database_url: str, n: int, config: LoadConfig, *, profile_rate: int = 0
) -> tuple[LoadStep, Profile | None]:
    conversations = asyncio.run(create_conversations(app.base_url, n))
    paths = [f"/v1/conversations/{c}/events" for c in conversations]
    clients = ClientsProcess(_job(app.port, paths, config, app.nats_url, app.nats_prefix))
    try:
        clients.wait_ready()
        with psycopg.connect(database_url, autocommit=True) as database:
            # py-spy's samples per second (0: no sampling)
            sampling = (
                start_sampling(app.pid, config.profile_seconds, profile_rate)
                if profile_rate
                else None
            )
            commits_before = _commits(database)
            with ResourceSampler(app.pid) as resources:
                http_errors = asyncio.run(_post_messages(app.base_url, conversations))
                outcome = clients.load_outcome()
            commits_after = _commits(database)
            found = finish_sampling(sampling, config.profile_seconds) if sampling else None
    finally:
        clients.kill()
    measured = _step(n, config, outcome, resources, http_errors, stored=True)
    return dataclasses.replace(measured, transactions=commits_after - commits_before), found


def _commits(database: psycopg.Connection[TupleRow]) -> int:
    """The transactions committed in the connection's database so far (as the sessions
    have reported them: each reports its own at most about once a second)."""
    row = database.execute(XACT_COMMIT).fetchone()
    return int(row[0]) if row else 0


def _job(
    port: int, paths: list[str], config: LoadConfig, nats_url: str | None, prefix: str
) -> LoadJob:
    """The clients' job; with `nats_url`, they also time the tokens' arrival on NATS."""
    return LoadJob(
        target=Target(host="127.0.0.1", port=port, headers=headers()),
        paths=[path for path in paths for _ in range(config.clients_per_conversation)],
        tokens=config.tokens,
        deadline_seconds=config.stream_seconds + config.drain_seconds + POST_SLACK_SECONDS,
        nats_url=nats_url,
        nats_subject=f"{prefix}.conversation.*.TokenStreamed" if nats_url else None,
    )


def _step(
    n: int,
    config: LoadConfig,
    outcome: LoadOutcome,
    resources: ResourceSampler,
    http_errors: list[str],
    *,
    stored: bool,
) -> LoadStep:
    span = (outcome.last_arrival_ns - outcome.first_due_ns) / 1e9
    latencies = [us / 1000 for us in outcome.latencies_us]
    on_nats = [us / 1000 for us in outcome.on_nats_us if us >= 0]
    created = [us / 1000 for us in outcome.created_us] if stored else []
    return LoadStep(
        created_ms=Sample.of(created) if created else None,
        on_nats_ms=Sample.of(on_nats) if on_nats else None,
        conversations=n,
        clients=outcome.clients,
        tokens_per_run=config.tokens,
        latency_ms=Sample.of(latencies) if latencies else None,
        delivered_per_second=outcome.tokens_received / span if span > 0 else 0.0,
        offered_per_second=n * config.tokens_per_second * config.clients_per_conversation,
        cpu_seconds=resources.cpu,
        wall_seconds=resources.wall,
        peak_rss_bytes=resources.peak_rss,
        client_cpu_seconds=outcome.cpu_seconds,
        tokens_received=outcome.tokens_received,
        load_average=load_average(),
        missing=outcome.missing,
        duplicates=outcome.duplicates,
        out_of_order=outcome.out_of_order,
        unfinished=outcome.unfinished,
        http_errors=http_errors + outcome.errors,
    )


async def create_conversations(base_url: str, n: int) -> list[str]:
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, headers=headers(), timeout=60) as client:

        async def create(index: int) -> str:
            async with gate:
                answer = await client.post("/v1/conversations", json={"title": f"load {index}"})
                answer.raise_for_status()
                return str(answer.json()["id"])

        return await asyncio.gather(*(create(i) for i in range(n)))


async def _post_messages(base_url: str, conversations: list[str]) -> list[str]:
    """Posts one message to each conversation at once; the HTTP errors, if any."""
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers(), timeout=60) as client:

        async def post(conversation_id: str) -> None:
            async with gate:
                try:
                    answer = await client.post(
                        f"/v1/conversations/{conversation_id}/messages", json={"content": "Go."}
                    )
                except httpx.HTTPError as error:
                    errors.append(f"POST messages: {error!r}")
                    return
                if answer.status_code != 202:
                    errors.append(f"POST messages: {answer.status_code} {answer.text[:200]}")

        await asyncio.gather(*(post(c) for c in conversations))
    return errors


def _measure_ceiling(servers: Servers, data_dir: Path, n: int, config: LoadConfig) -> LoadStep:
    prefix = f"c{secrets.token_hex(6)}"
    port = free_port()
    command = [sys.executable, "-m", "bench.ceiling", "serve", str(port), servers.nats_url, prefix]
    server = ServerProcess(command, _python_env(), data_dir / "ceiling.log", port)
    app = server.start("/health")
    try:
        conversations = [str(uuid.uuid4()) for _ in range(n)]
        paths = [f"/c/{c}" for c in conversations]
        # No NATS subscriber in the clients here: the ceiling's clients do the least work.
        clients = ClientsProcess(_job(port, paths, config, None, prefix))
        try:
            clients.wait_ready()
            job = PublishJob(
                nats_url=servers.nats_url,
                prefix=prefix,
                conversations=conversations,
                tokens=config.tokens,
                tokens_per_second=config.tokens_per_second,
            )
            with ResourceSampler(app.pid) as resources:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(
                    [sys.executable, "-m", "bench.ceiling", "publish"],
                    input=msgspec.json.encode(job),
                    check=True,
                    cwd=_root(),
                )
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                outcome = clients.load_outcome()
        finally:
            clients.kill()
    finally:
        server.stop()
    publisher = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    measured = _step(n, config, outcome, resources, [], stored=False)
    return dataclasses.replace(measured, publisher_cpu_seconds=publisher)


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_root())
    return env
