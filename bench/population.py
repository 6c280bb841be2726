"""A store of many conversations, generated through the domain for the read benchmarks.

Every event is decided by a `Conversation` aggregate (posting, streaming tokens, tool
calls, completing, failing and cancelling runs, renaming, archiving), then saved with
the service's mapper into the recorder's table (see `_Saver`): many conversations per
transaction, by a few worker processes at once, each with its share of the
conversations. This is setup: it is timed and reported, not judged.

The mix is drawn with a fixed seed so that runs are comparable: most conversations
are short (one or two exchanges, some never used), one is deep (DEEP_EXCHANGES
exchanges, for paging through its messages), and the token events fill the rest of
the event budget, spread over the replies.
"""

import concurrent.futures
import multiprocessing
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import psycopg
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)

from bench.access import OWNER
from bench.measure import progress
from threadlog.domain.application import ConversationService
from threadlog.domain.content import Seal
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import open_content_keys
from threadlog.infra.store.eventstore import open_service, while_schema_races

BATCH_EVENTS = 2_000  # events per transaction
WORDS = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
# Exchanges per conversation (besides the deep one), with their weights.
EXCHANGES = (0, 1, 2, 3, 4, 6)
EXCHANGE_WEIGHTS = (30, 45, 14, 6, 3, 2)
TOOL_CALL_SHARE = 0.1
FAILED_SHARE = 0.03
CANCELLED_SHARE = 0.03
RENAMED_SHARE = 0.05
ARCHIVED_SHARE = 0.02

Ending = Literal["completed", "failed", "cancelled"]


@dataclass(frozen=True, kw_only=True)
class PopulationConfig:
    conversations: int
    events: int
    deep_exchanges: int  # exchanges of the deep conversation: twice as many messages
    workers: int = 3  # processes deciding and saving conversations
    seed: int = 20261123


@dataclass(frozen=True, slots=True)
class _Exchange:
    tokens: int
    tool_call: bool
    ending: Ending


@dataclass(frozen=True, slots=True)
class _Plan:
    exchanges: tuple[_Exchange, ...]
    renamed: bool
    archived: bool


@dataclass(frozen=True, kw_only=True)
class Population:
    config: PopulationConfig
    events: int
    by_type: dict[str, int]
    messages: int
    deep_conversation: UUID
    deep_messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def populate(database_url: str, config: PopulationConfig) -> Population:
    """Stores the population in the store at `database_url`; returns what was stored.

    `config.workers` processes each decide and save a share of the conversations (the
    machine's other work then slows the setup less); the mix does not depend on it."""
    plans = _plans(config)
    shares = [range(w, config.conversations, config.workers) for w in range(config.workers)]
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
        counts = list(
            pool.map(_populate_share, [database_url] * len(shares), [config] * len(shares), shares)
        )
    seconds = time.perf_counter() - started
    by_type: Counter[str] = Counter()
    deep_id: UUID | None = None
    for share_counts, share_deep in counts:
        by_type.update(share_counts)
        deep_id = deep_id or share_deep
    assert deep_id is not None
    total = sum(by_type.values())
    if total != config.events:
        raise AssertionError(f"stored {total} events, planned {config.events}")
    return Population(
        config=config,
        events=total,
        by_type=dict(by_type.most_common()),
        messages=by_type["MessagePosted"] + by_type["MessageCompleted"],
        deep_conversation=deep_id,
        deep_messages=_messages_of(plans[0]),
        seconds=seconds,
    )


def _populate_share(
    database_url: str, config: PopulationConfig, indexes: range
) -> tuple[dict[str, int], UUID | None]:
    """In a worker process: decides and saves the conversations at `indexes`."""
    plans = _plans(config)
    settings = Settings(database_url=database_url)
    keys = while_schema_races(lambda: open_content_keys(settings))
    # Content is sealed with the owner's key, as the service records it.
    seal = keys.seal_for(OWNER)
    service = while_schema_races(lambda: open_service(settings, keys))
    by_type: Counter[str] = Counter()
    deep_id: UUID | None = None
    try:
        with _Saver(service, database_url) as saver:
            for done, index in enumerate(indexes, 1):
                conversation = _enact(plans[index], index, seal)
                if index == 0:
                    deep_id = conversation.id
                events = conversation.collect_events()
                by_type.update(type(event).__name__ for event in events)
                saver.add(events)
                if indexes.start == 0 and done % 5_000 == 0:
                    progress(
                        f"population: {done * indexes.step:,} conversations, "
                        f"about {saver.added * indexes.step:,} events"
                    )
    finally:
        service.close()
        keys.close()
    return dict(by_type), deep_id


def _messages_of(plan: _Plan) -> int:
    return sum(2 if e.ending == "completed" else 1 for e in plan.exchanges)


class _Saver:
    """Stores decided events as the service's recorder would, BATCH_EVENTS per transaction.

    The rows are the mapper's stored events (topic and encoded state), written with
    COPY into the recorder's table, which assigns notification ids in insertion order
    as the recorder's INSERT does. The recorder itself stored about 3,000 events/s
    here, too slow to set up a million events while other work shares the machine."""

    def __init__(self, service: ConversationService, database_url: str) -> None:
        recorder = service.recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        self._mapper = service.mapper
        self._copy = SQL(
            "COPY {}.{} (originator_id, originator_version, topic, state) FROM STDIN"
        ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
        self._connection = psycopg.connect(database_url)
        self._pending: list[DomainEventProtocol[UUID]] = []
        self.added = 0

    def __enter__(self) -> "_Saver":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                while self._pending:
                    self._save()
        finally:
            self._connection.close()

    def add(self, events: Sequence[DomainEventProtocol[UUID]]) -> None:
        self._pending.extend(events)
        self.added += len(events)
        while len(self._pending) >= BATCH_EVENTS:
            self._save()

    def _save(self) -> None:
        batch = self._pending[:BATCH_EVENTS]
        del self._pending[:BATCH_EVENTS]
        rows = [
            (stored.originator_id, stored.originator_version, stored.topic, stored.state)
            for stored in map(self._mapper.to_stored_event, batch)
        ]
        with (
            self._connection.transaction(),
            self._connection.cursor() as cursor,
            cursor.copy(self._copy) as copy,
        ):
            for row in rows:
                copy.write_row(row)


def _plans(config: PopulationConfig) -> list[_Plan]:
    rng = random.Random(config.seed)
    shapes: list[tuple[list[tuple[bool, Ending]], bool, bool]] = []
    deep = [(False, "completed")] * config.deep_exchanges
    shapes.append((deep, False, False))  # type: ignore[arg-type]
    for _ in range(config.conversations - 1):
        count = rng.choices(EXCHANGES, EXCHANGE_WEIGHTS)[0]
        exchanges = [(rng.random() < TOOL_CALL_SHARE, _ending(rng)) for _ in range(count)]
        shapes.append((exchanges, rng.random() < RENAMED_SHARE, rng.random() < ARCHIVED_SHARE))
    fixed = sum(
        _fixed_events(exchanges, renamed, archived) for exchanges, renamed, archived in shapes
    )
    budget = config.events - fixed
    runs = sum(len(exchanges) for exchanges, _, _ in shapes)
    if budget < runs:
        raise ValueError(
            f"{config.events} events are too few for this mix ({fixed} without tokens)"
        )
    tokens = iter(_spread_tokens(rng, budget, runs))
    return [
        _Plan(
            exchanges=tuple(
                _Exchange(tokens=next(tokens), tool_call=tool, ending=ending)
                for tool, ending in exchanges
            ),
            renamed=renamed,
            archived=archived,
        )
        for exchanges, renamed, archived in shapes
    ]


def _ending(rng: random.Random) -> Ending:
    draw = rng.random()
    if draw < FAILED_SHARE:
        return "failed"
    if draw < FAILED_SHARE + CANCELLED_SHARE:
        return "cancelled"
    return "completed"


def _fixed_events(exchanges: list[tuple[bool, Ending]], renamed: bool, archived: bool) -> int:
    """Every event of a conversation but its tokens."""
    count = 1 + int(renamed) + int(archived)
    for tool_call, ending in exchanges:
        # MessagePosted, RunStarted, (tool call pair), MessageCompleted + RunCompleted or the end.
        count += 2 + 2 * int(tool_call) + (2 if ending == "completed" else 1)
    return count


def _spread_tokens(rng: random.Random, budget: int, runs: int) -> list[int]:
    """`budget` tokens over `runs` replies, at least one each, skewed like reply lengths."""
    weights = [rng.lognormvariate(0.0, 0.8) for _ in range(runs)]
    spare = budget - runs
    total = sum(weights)
    counts = [1 + int(spare * weight / total) for weight in weights]
    for index in range(budget - sum(counts)):
        counts[index % runs] += 1
    return counts


def _enact(plan: _Plan, index: int, seal: Seal) -> Conversation:
    cause = Cause(actor=f"user:{OWNER}", correlation_id=uuid.uuid4().hex)
    conversation = Conversation.start(
        owner=OWNER,
        agent="assistant",
        title=f"Conversation {index}",
        metadata={"source": "bench"},
        cause=cause,
    )
    for number, exchange in enumerate(plan.exchanges):
        _exchange(conversation, exchange, f"Question {number} of conversation {index}?", seal)
    if plan.renamed:
        conversation.rename(title=f"Renamed conversation {index}", cause=cause)
    if plan.archived:
        conversation.archive(cause=cause)
    return conversation


def _exchange(conversation: Conversation, exchange: _Exchange, question: str, seal: Seal) -> None:
    user = Cause(actor=f"user:{OWNER}", correlation_id=uuid.uuid4().hex)
    posted = conversation.post_message(
        content=seal(question), client_message_id=None, model="bench", cause=user
    )
    run_id = posted.run_id
    agent = Cause(actor="agent:assistant", correlation_id=user.correlation_id, causation_id=run_id)
    if exchange.tool_call:
        call_id = uuid.uuid4().hex
        conversation.start_tool_call(
            run_id=run_id,
            tool_call_id=call_id,
            tool_name="search",
            args=seal({"q": question}),
            cause=agent,
        )
        conversation.complete_tool_call(
            run_id=run_id,
            tool_call_id=call_id,
            tool_name="search",
            result=seal({"hits": 3}),
            error=None,
            cause=agent,
        )
    reply = list(_deltas(exchange.tokens))
    for delta in reply:
        conversation.stream_token(run_id=run_id, part=0, delta=seal(delta), cause=agent)
    content = "".join(reply)
    if exchange.ending == "failed":
        conversation.fail_run(run_id=run_id, error="model_error", message="boom", cause=agent)
    elif exchange.ending == "cancelled":
        conversation.cancel_run(
            run_id=run_id, reason="requested", partial_content=seal(content), cause=user
        )
    else:
        conversation.complete_message(
            run_id=run_id,
            content=seal(content),
            model_messages=seal(_model_messages(question, content)),
            cause=agent,
        )
        conversation.complete_run(
            run_id=run_id,
            usage={"input_tokens": 12, "output_tokens": exchange.tokens, "requests": 1},
            duration_ms=25.0 * exchange.tokens,
            time_to_first_token_ms=120.0,
            cost_usd=0.00001 * exchange.tokens,
            cause=agent,
        )


def _deltas(count: int) -> Iterator[str]:
    for index in range(count):
        yield WORDS[index % len(WORDS)]


def _model_messages(question: str, reply: str) -> str:
    """pydantic-ai's JSON of one run's messages, as the run executor stores it."""
    messages: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart(question)]),
        ModelResponse(parts=[TextPart(reply)], model_name="bench"),
    ]
    return ModelMessagesTypeAdapter.dump_json(messages).decode()
