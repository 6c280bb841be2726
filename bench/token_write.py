"""Benchmark 1: token events persisted on PostgreSQL, against raw psycopg inserts.

The threadlog path mirrors the run executor: C conversations, each a live aggregate
with an active run, append TokenStreamed events and flush every B pending ones
through the store's group-commit writer, all in one asyncio loop (on PostgreSQL the
writer runs on that loop: infra/store/loop_writer.py). The baseline
(the target's) inserts rows of the same sizes into a table of the same shape with
psycopg's `executemany`, 100 rows per transaction, on one connection; a binary COPY of
the same rows, 1,000 per transaction, into another such table is reported alongside.

Every repetition gets a fresh database, so neither path pays for the other's rows.
A flush that makes no progress for STALL_SECONDS counts the repetition as stalled
(the writer is stuck) instead of hanging the whole run.
"""

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from bench.measure import Sample, progress, ratios
from bench.profile import Profile, sample_while
from bench.servers import Servers
from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import open_content_keys
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.store.loop_writer import group_commit_writer
from threadlog.infra.store.writer import GroupCommit

STALL_SECONDS = 15.0
DELTAS = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
RAW_TABLE = "bench_raw_events"
COPY_TABLE = "bench_copy_events"
# The shape of eventsourcing's events table, its notification id index included.
RAW_SCHEMA = tuple(
    statement
    for table in (RAW_TABLE, COPY_TABLE)
    for statement in (
        f"CREATE TABLE {table} (originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
        "topic text, state bytea, notification_id bigserial, "
        "PRIMARY KEY (originator_id, originator_version))",
        f"CREATE UNIQUE INDEX {table}_notification_id_idx ON {table} (notification_id)",
    )
)
RAW_INSERT = (
    f"INSERT INTO {RAW_TABLE} (originator_id, originator_version, topic, state) "
    "VALUES (%s, %s, %s, %s)"
)
RAW_COPY = (
    f"COPY {COPY_TABLE} (originator_id, originator_version, topic, state) "
    "FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ("uuid", "int8", "text", "bytea")


@dataclass(frozen=True, kw_only=True)
class TokenWriteConfig:
    concurrency: tuple[int, ...]
    tokens_per_conversation: int
    repetitions: int
    flush_every: int = 64
    raw_rows_per_transaction: int = 100
    copy_rows_per_transaction: int = 1000
    writer_max_events: int = Settings().writer_max_events
    profile_seconds: float = 0  # py-spy on threadlog's path at the largest C, if it missed


@dataclass(frozen=True, kw_only=True)
class TokenWriteResult:
    config: TokenWriteConfig
    concurrency: int
    events: int
    threadlog: Sample | None  # events/s, over the repetitions that did not stall
    raw: Sample  # events/s
    copy: Sample  # events/s of the binary COPY (informational: no target)
    ratio: Sample | None  # threadlog / raw, per repetition
    copy_ratio: Sample | None  # threadlog / COPY, per repetition
    stalled: int  # repetitions whose writer made no progress for STALL_SECONDS
    mean_event_bytes: int  # the stored `state` of one token event, on average
    profile: Profile | None = None  # this process storing tokens again and again

    @property
    def target_met(self) -> bool:
        return self.stalled == 0 and self.ratio is not None and self.ratio.median >= 0.5


@dataclass(frozen=True, slots=True)
class _Template:
    """What one conversation's token rows look like once stored: topic, state."""

    first_position: int
    rows: tuple[tuple[str, bytes], ...]


class _Stalled(Exception):
    """The writer made no progress: its transaction is stuck."""


@dataclass(slots=True)
class _Scratch:
    service: ConversationService
    writer_max_events: int
    connection: psycopg.Connection[TupleRow]


class _LiveRun:
    """A live aggregate with an active run, as the run executor holds it."""

    def __init__(self, service: ConversationService, cause: Cause) -> None:
        started = service.start_conversation(
            owner="bench", agent="assistant", title="bench", metadata={}, cause=cause
        )
        posted = service.post_message(
            started.value.id,
            content="Tell me a story.",
            client_message_id=None,
            model="bench",
            cause=cause,
        )
        self.run_id = posted.value.run_id
        self.conversation: Conversation = service.get_conversation(started.value.id)
        # Deltas are sealed with the owner's key, as the run executor seals them.
        self.seal = service.seal_for("bench")
        self.cause = Cause(
            actor="agent:assistant", correlation_id=cause.correlation_id, causation_id=self.run_id
        )

    def stream(self, index: int) -> None:
        self.conversation.stream_token(
            run_id=self.run_id,
            part=0,
            delta=self.seal(DELTAS[index % len(DELTAS)]),
            cause=self.cause,
        )


def run_token_write(servers: Servers, config: TokenWriteConfig) -> list[TokenWriteResult]:
    with _scratch(servers, config) as scratch:
        template = _template(scratch.service, config.tokens_per_conversation)
    results = [
        _measure_concurrency(servers, config, template, count) for count in config.concurrency
    ]
    last = results[-1]
    if config.profile_seconds and not last.target_met:
        results[-1] = dataclasses.replace(last, profile=_profile(servers, config, last))
    return results


def _profile(
    servers: Servers, config: TokenWriteConfig, result: TokenWriteResult
) -> Profile | None:
    """This process (the benchmark runs threadlog's path in it) storing C conversations'
    tokens again and again, sampled by py-spy."""
    progress(f"token write: py-spy sampling threadlog's path at C={result.concurrency}")
    with _scratch(servers, config) as scratch:
        return sample_while(
            os.getpid(),
            config.profile_seconds,
            lambda: _threadlog_rate(
                scratch, result.concurrency, config.tokens_per_conversation, config.flush_every
            ),
        )


def _measure_concurrency(
    servers: Servers, config: TokenWriteConfig, template: _Template, count: int
) -> TokenWriteResult:
    measured: list[_Rates] = []
    for repetition in range(config.repetitions):
        progress(
            f"token write: C={count}, writer max {config.writer_max_events} events, "
            f"repetition {repetition + 1}/{config.repetitions}"
        )
        measured.append(_repetition(servers, config, template, count, repetition))
    return _result(count, config, template, measured)


@dataclass(frozen=True, slots=True)
class _Rates:
    """One repetition's events/s: threadlog (None: stalled), raw executemany, raw COPY."""

    threadlog: float | None
    raw: float
    copy: float


def _repetition(
    servers: Servers, config: TokenWriteConfig, template: _Template, count: int, repetition: int
) -> _Rates:
    with _scratch(servers, config) as scratch:
        try:
            return _measure_all(scratch, template, count, config, repetition)
        except _Stalled:
            progress(f"token write: no flush finished within {STALL_SECONDS:.0f} s: stalled")
    # The stuck transaction holds the table lock: measure the baselines in a new database.
    with _scratch(servers, config) as scratch:
        warm_up = _template_prefix(template, config.tokens_per_conversation // 20)
        _raw_rate(scratch, warm_up, count, config)
        _copy_rate(scratch, warm_up, count, config)
        return _Rates(
            threadlog=None,
            raw=_raw_rate(scratch, template, count, config),
            copy=_copy_rate(scratch, template, count, config),
        )


def _result(
    count: int, config: TokenWriteConfig, template: _Template, measured: list[_Rates]
) -> TokenWriteResult:
    paired = [(rates.threadlog, rates) for rates in measured if rates.threadlog is not None]
    threadlog = Sample.of(rate for rate, _ in paired) if paired else None
    return TokenWriteResult(
        config=config,
        concurrency=count,
        events=count * config.tokens_per_conversation,
        threadlog=threadlog,
        raw=Sample.of(rates.raw for rates in measured),
        copy=Sample.of(rates.copy for rates in measured),
        ratio=ratios(threadlog, Sample.of(r.raw for _, r in paired)) if threadlog else None,
        copy_ratio=ratios(threadlog, Sample.of(r.copy for _, r in paired)) if threadlog else None,
        stalled=sum(rates.threadlog is None for rates in measured),
        mean_event_bytes=sum(len(state) for _, state in template.rows) // len(template.rows),
    )


@contextlib.contextmanager
def _scratch(servers: Servers, config: TokenWriteConfig) -> Iterator[_Scratch]:
    url = servers.databases.create()
    settings = Settings(database_url=url)
    keys = open_content_keys(settings)
    service = open_service(settings, keys)
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            for statement in RAW_SCHEMA:
                connection.execute(statement)
            yield _Scratch(service, config.writer_max_events, connection)
    finally:
        service.close()
        keys.close()
        # Dropping with FORCE also ends a stalled writer's stuck session.
        servers.databases.drop(url)


def _measure_all(
    scratch: _Scratch, template: _Template, count: int, config: TokenWriteConfig, repetition: int
) -> _Rates:
    """threadlog's rate and both baselines', back to back, rotating which goes first."""
    tokens = config.tokens_per_conversation
    # Warm the three paths (pools, prepared statements, caches) before measuring.
    _threadlog_rate(scratch, count, max(1, tokens // 20), config.flush_every)
    warm_up = _template_prefix(template, tokens // 20)
    _raw_rate(scratch, warm_up, count, config)
    _copy_rate(scratch, warm_up, count, config)
    paths: dict[str, Callable[[], float]] = {
        "threadlog": lambda: _threadlog_rate(scratch, count, tokens, config.flush_every),
        "raw": lambda: _raw_rate(scratch, template, count, config),
        "copy": lambda: _copy_rate(scratch, template, count, config),
    }
    names = list(paths)
    shift = repetition % len(names)
    rates = {name: paths[name]() for name in names[shift:] + names[:shift]}
    return _Rates(threadlog=rates["threadlog"], raw=rates["raw"], copy=rates["copy"])


def _threadlog_rate(scratch: _Scratch, count: int, tokens: int, flush_every: int) -> float:
    """Events/s; raises _Stalled if the writer stops making progress."""
    cause = Cause(actor="user:bench", correlation_id=uuid.uuid4().hex)
    runs = [_LiveRun(scratch.service, cause) for _ in range(count)]
    writer = group_commit_writer(scratch.service, max_events=scratch.writer_max_events)
    seconds = asyncio.run(_stream_all(runs, writer, tokens, flush_every))
    if seconds is None:
        raise _Stalled
    return count * tokens / seconds


async def _stream_all(
    runs: Sequence[_LiveRun], writer: GroupCommit, tokens: int, flush_every: int
) -> float | None:
    """The seconds it took to store every token, or None if the writer stalled (it is
    left to the end of the loop: its retries may take minutes)."""
    await writer.open()
    started = time.perf_counter()
    stalled = False
    try:
        async with asyncio.TaskGroup() as group:
            for run in runs:
                group.create_task(_stream(run, writer, tokens, flush_every))
    except* _Stalled:
        stalled = True
    if stalled:
        return None
    seconds = time.perf_counter() - started
    await writer.close()
    return seconds


async def _stream(run: _LiveRun, writer: GroupCommit, tokens: int, flush_every: int) -> None:
    conversation = run.conversation
    for index in range(tokens):
        run.stream(index)
        if len(conversation.pending_events) >= flush_every:
            await _flush(writer, conversation)
    await _flush(writer, conversation)


async def _flush(writer: GroupCommit, conversation: Conversation) -> None:
    try:
        await asyncio.wait_for(writer.append(conversation.collect_events()), STALL_SECONDS)
    except TimeoutError:
        raise _Stalled from None


def _template(service: ConversationService, tokens: int) -> _Template:
    """The stored form of one conversation's token events (never saved)."""
    cause = Cause(actor="user:bench", correlation_id=uuid.uuid4().hex)
    conversation = Conversation.start(
        owner="bench", agent="assistant", title="bench", metadata={}, cause=cause
    )
    posted = conversation.post_message(
        content="Tell me a story.", client_message_id=None, model="bench", cause=cause
    )
    conversation.collect_events()
    first_position = conversation.version + 1
    run_cause = Cause(
        actor="agent:assistant", correlation_id=cause.correlation_id, causation_id=posted.run_id
    )
    seal = service.seal_for("bench")  # rows of the same size as the sealed ones
    for index in range(tokens):
        conversation.stream_token(
            run_id=posted.run_id, part=0, delta=seal(DELTAS[index % len(DELTAS)]), cause=run_cause
        )
    stored = [service.mapper.to_stored_event(event) for event in conversation.collect_events()]
    return _Template(first_position, tuple((s.topic, s.state) for s in stored))


def _template_prefix(template: _Template, tokens: int) -> _Template:
    return _Template(template.first_position, template.rows[: max(1, tokens)])


def _raw_rate(
    scratch: _Scratch, template: _Template, count: int, config: TokenWriteConfig
) -> float:
    rows = list(_raw_rows(template, count, config.flush_every))
    per_transaction = config.raw_rows_per_transaction
    connection = scratch.connection
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_transaction):
            with connection.transaction():
                cursor.executemany(RAW_INSERT, rows[start : start + per_transaction])
    return len(rows) / (time.perf_counter() - started)


def _copy_rate(
    scratch: _Scratch, template: _Template, count: int, config: TokenWriteConfig
) -> float:
    """Events/s of a binary COPY of the same rows, `copy_rows_per_transaction` at a time."""
    rows = list(_raw_rows(template, count, config.flush_every))
    per_transaction = config.copy_rows_per_transaction
    connection = scratch.connection
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_transaction):
            with connection.transaction(), cursor.copy(RAW_COPY) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows[start : start + per_transaction]:
                    copy.write_row(row)
    return len(rows) / (time.perf_counter() - started)


def _raw_rows(
    template: _Template, count: int, flush_every: int
) -> Iterator[tuple[uuid.UUID, int, str, bytes]]:
    """The rows in the order threadlog's flushes reach the store: B per conversation in turn."""
    ids = [uuid.uuid4() for _ in range(count)]
    for start in range(0, len(template.rows), flush_every):
        chunk = template.rows[start : start + flush_every]
        for originator_id in ids:
            for offset, (topic, state) in enumerate(chunk, start):
                yield originator_id, template.first_position + offset, topic, state
