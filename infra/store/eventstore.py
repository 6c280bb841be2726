"""The event store: the conversation service persisted on SQLite or PostgreSQL.

`open_service` is the one place that turns settings into an eventsourcing
environment. `EventLog` reads a conversation's events together with their global
positions (the store's notification ids), which the library's own reads omit: as
domain events (`read`), or as the stored rows (`read_rows`), for readers that serve
events without building them (infra/store/envelope.py).
"""

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar, cast
from uuid import UUID

import structlog
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    InternalError,
    Mapper,
    OperationalError,
    StoredEvent,
    TrackingRecorder,
)
from eventsourcing.postgres import (
    ConnectionPool,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from threadlog.domain.application import ConversationService
from threadlog.domain.content import plaintext_seals
from threadlog.domain.events import ConversationEvent
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.postgres import ColumnArraysPostgresApplicationRecorder
from threadlog.infra.store.sqlite import NotifyingSQLiteApplicationRecorder
from threadlog.infra.store.transcoder import MsgspecMapper, MsgspecTranscoder

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The store is unreachable (PostgreSQL restarting, the network down): worth retrying.
STORE_UNAVAILABLE = (OperationalError, InterfaceError)
# How long a lost connection is retried before the pool gives up on it (psycopg_pool's
# default is 5 minutes of exponential backoff, so after a PostgreSQL restart the pool
# could take tens of seconds to reconnect). Clients waiting for a connection make it
# try again anyway.
RECONNECT_SECONDS = 2.0
FAIL_FAST_SECONDS = 0.1
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 2.0
PING_IDLE_SECONDS = 1.0


def store_environment(settings: Settings) -> dict[str, str]:
    env = {
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        # eventsourcing's JSON format, read and written with msgspec (infra/store/transcoder.py).
        "TRANSCODER_TOPIC": get_topic(MsgspecTranscoder),
        "MAPPER_TOPIC": get_topic(MsgspecMapper),
    }
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env.update(
            PERSISTENCE_MODULE="eventsourcing.sqlite",
            SQLITE_DBNAME=str(settings.sqlite_path),
            SQLITE_LOCK_TIMEOUT="10",
            APPLICATION_RECORDER_TOPIC=get_topic(NotifyingSQLiteApplicationRecorder),
        )
        return env
    params = conninfo_to_dict(settings.database_url)
    env.update(
        PERSISTENCE_MODULE="eventsourcing.postgres",
        POSTGRES_DBNAME=str(params.get("dbname", "postgres")),
        POSTGRES_HOST=str(params.get("host", "127.0.0.1")),
        POSTGRES_PORT=str(params.get("port", "5432")),
        POSTGRES_USER=str(params.get("user", "postgres")),
        POSTGRES_PASSWORD=str(params.get("password", "")),
        # Kept open: 4 (reads and sync saves; a serving process's token writes have a
        # connection of their own, infra/store/loop_writer.py). Up to 30 under load.
        POSTGRES_POOL_SIZE="4",
        POSTGRES_MAX_OVERFLOW="26",
        POSTGRES_CONNECT_TIMEOUT="5",
        POSTGRES_PRE_PING="y",
        APPLICATION_RECORDER_TOPIC=get_topic(ColumnArraysPostgresApplicationRecorder),
    )
    return env


def open_service(settings: Settings, keys: ContentKeys | None = None) -> ConversationService:
    """`keys`: the owners' content keys, to record personal content sealed (without
    them content is recorded as it is: tools and benchmarks that write no content)."""
    service = ConversationService(
        store_environment(settings),
        max_message_bytes=settings.max_message_bytes,
        seal_for=plaintext_seals if keys is None else keys.seal_for,
    )
    reconnect_promptly(service.recorder)
    return service


def reconnect_promptly(owner: Any) -> None:
    """Makes the PostgreSQL pool of `owner` (a recorder or a view: anything with a
    `datastore`) reconnect within seconds of the server coming back, and refuse at
    once while the server is known to be unreachable."""
    datastore = getattr(owner, "datastore", None)
    if isinstance(datastore, PostgresDatastore):
        datastore.pool.reconnect_timeout = RECONNECT_SECONDS
        # eventsourcing builds the pool itself; the subclass adds behaviour, no state.
        datastore.pool.__class__ = _FailFastPool
        if datastore.pool._check is not None:  # POSTGRES_PRE_PING
            datastore.pool._check = _PingWhenIdle()


class _PingWhenIdle:
    """The pool's check of a connection it hands out (POSTGRES_PRE_PING), only for one
    unused for PING_IDLE_SECONDS: each ping is a round trip and a transaction, and the
    writer takes a connection per commit. A connection used a moment ago is as good as
    a ping; should the server have gone in that moment, the caller's retry covers it."""

    def __init__(self) -> None:
        self._used: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def __call__(self, conn: Any) -> None:
        now = time.monotonic()
        last = self._used.get(conn)
        self._used[conn] = now
        if last is None or now - last >= PING_IDLE_SECONDS:
            ConnectionPool.check_connection(conn)


class _FailFastPool(ConnectionPool[Any]):
    """While the last attempt to connect failed, a client waits FAIL_FAST_SECONDS for a
    connection instead of the pool's whole timeout. eventsourcing retries each store
    call ten times: at 5 s a wait, a request would take most of a minute to fail."""

    _unreachable = False

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            connection = super()._connect(timeout=timeout)
        except Exception:
            self._unreachable = True
            raise
        self._unreachable = False
        return connection

    def getconn(self, timeout: float | None = None) -> Any:
        if self._unreachable:
            timeout = min(self.timeout if timeout is None else timeout, FAIL_FAST_SECONDS)
        return super().getconn(timeout)


def while_store_recovers(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """`call()`, tried again while the store is unreachable, for at most `seconds`:
    a PostgreSQL restart pauses the caller instead of failing it. Blocks: call it in a
    thread of its own."""
    deadline = time.monotonic() + seconds
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return call()
        except STORE_UNAVAILABLE as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("store.unavailable", what=what, error=repr(error), retry_in=delay)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)


async def until_store_recovers(
    attempt: Callable[[], Awaitable[T]], *, seconds: float, what: str
) -> T:
    """`while_store_recovers` for a call on the event loop: `await attempt()`, tried
    again while the store is unreachable, for at most `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return await attempt()
        except STORE_UNAVAILABLE as error:
            if loop.time() + delay > deadline:
                raise
            log.warning("store.unavailable", what=what, error=repr(error), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)


SCHEMA_ATTEMPTS = 5


def while_schema_races(open_: Callable[[], T]) -> T:
    """Opens what creates tables if missing. Processes starting together on an empty
    PostgreSQL database (an API and its workers) race on CREATE TABLE IF NOT EXISTS
    (and on bootstrapping the admin); the loser sees a conflict ("duplicate key", or
    PostgreSQL's "tuple concurrently updated", an InternalError) and tries again.
    Blocks: call it in a thread of its own."""
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return open_()
        except (IntegrityError, InternalError):
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def open_tracking(service: ConversationService) -> TrackingRecorder:
    """The tracking table that keeps checkpoints (relay, projections) in the store."""
    return service.factory.tracking_recorder()


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """A stored conversation event with its global position in the store."""

    event: ConversationEvent
    global_position: int


class StoredRow(NamedTuple):
    """A conversation's stored event as the store holds it: `state` is the mapper's
    encoding (infra/store/transcoder.py), not yet decoded."""

    position: int
    topic: str
    state: bytes
    global_position: int


def topics_of(*event_classes: type[ConversationEvent]) -> tuple[str, ...]:
    return tuple(get_topic(cls) for cls in event_classes)


class EventLog:
    """Reads conversations' events in position order, with global positions."""

    def __init__(self, service: ConversationService) -> None:
        self._service = service
        recorder = service.recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            self._select: _Select = _PostgresSelect(recorder)
        elif isinstance(recorder, SQLiteApplicationRecorder):
            self._select = _SQLiteSelect(recorder)
        else:
            raise TypeError(f"unsupported recorder {type(recorder).__name__}")

    def read(
        self,
        conversation_id: UUID,
        *,
        after: int = 0,
        up_to: int | None = None,
        limit: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[LoggedEvent]:
        rows = self.read_rows(conversation_id, after=after, up_to=up_to, limit=limit, topics=topics)
        to_event = self._service.mapper.to_domain_event
        return [
            LoggedEvent(
                cast(ConversationEvent, to_event(stored_event(conversation_id, row))),
                row.global_position,
            )
            for row in rows
        ]

    def read_rows(
        self,
        conversation_id: UUID,
        *,
        after: int = 0,
        up_to: int | None = None,
        limit: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[StoredRow]:
        """As `read`, but the rows as stored: decode them with `mapper`."""
        return self._select(conversation_id, Window(after, up_to, limit, topics))

    @property
    def mapper(self) -> Mapper[UUID]:
        """What turns a stored row's state into a domain event."""
        return self._service.mapper

    def exists(self, conversation_id: UUID) -> bool:
        return bool(self._select(conversation_id, Window(up_to=1, limit=1)))

    def max_global_position(self) -> int:
        return self._service.recorder.max_notification_id() or 0


def stored_event(conversation_id: UUID, row: StoredRow) -> StoredEvent:
    return StoredEvent(
        originator_id=conversation_id,
        originator_version=row.position,
        topic=row.topic,
        state=row.state,
    )


_Rows = list[StoredRow]


@dataclass(frozen=True, slots=True)
class Window:
    """Which of a conversation's events to read: positions after `after`, up to `up_to`."""

    after: int = 0
    up_to: int | None = None
    limit: int | None = None
    topics: Sequence[str] = ()


class _Select(Protocol):
    def __call__(self, conversation_id: UUID, window: Window) -> _Rows: ...


class _PostgresSelect:
    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self._recorder = recorder
        self._table = SQL("{}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )

    def __call__(self, conversation_id: UUID, window: Window) -> _Rows:
        with (
            self._recorder.datastore.get_connection() as conn,
            # Tuples: a replay reads thousands of rows, and dicts cost more to build. Binary:
            # `state` comes as its bytes, not as hex text twice their size to decode.
            conn.cursor(row_factory=tuple_row, binary=True) as cursor,
        ):
            if window.limit is None or window.topics:
                return self._fetch(cursor, conversation_id, window)
            # Positions are dense, so a page is most likely the next `limit` positions:
            # bounding the range too keeps PostgreSQL from reading the rest of a long
            # conversation to sort it (it expects few rows of one conversation, so it
            # plans a bitmap scan and a sort). Rows past a gap come from a second read.
            bound = window.after + window.limit
            if window.up_to is not None:
                bound = min(bound, window.up_to)
            rows = self._fetch(cursor, conversation_id, Window(window.after, bound, window.limit))
            if len(rows) < window.limit and (window.up_to is None or bound < window.up_to):
                rest = Window(bound, window.up_to, window.limit - len(rows))
                rows += self._fetch(cursor, conversation_id, rest)
            return rows

    def _fetch(self, cursor: Any, conversation_id: UUID, window: Window) -> _Rows:
        query = SQL(
            "SELECT originator_version, topic, state, notification_id FROM {} "
            "WHERE originator_id = %s AND originator_version > %s"
        ).format(self._table)
        params: list[Any] = [conversation_id, window.after]
        if window.up_to is not None:
            query += SQL(" AND originator_version <= %s")
            params.append(window.up_to)
        if window.topics:
            query += SQL(" AND topic = ANY(%s)")
            params.append(list(window.topics))
        query += SQL(" ORDER BY originator_version")
        if window.limit is not None:
            query += SQL(" LIMIT %s")
            params.append(window.limit)
        cursor.execute(query, params, prepare=True)
        return [
            StoredRow(version, topic, bytes(state), global_position)
            for version, topic, state, global_position in cursor.fetchall()
        ]


class _SQLiteSelect:
    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self._recorder = recorder
        self._table = recorder.events_table_name

    def __call__(self, conversation_id: UUID, window: Window) -> _Rows:
        query = (
            f"SELECT rowid, originator_version, topic, state FROM {self._table} "  # noqa: S608
            "WHERE originator_id = ? AND originator_version > ?"
        )
        params: list[Any] = [conversation_id.hex, window.after]
        if window.up_to is not None:
            query += " AND originator_version <= ?"
            params.append(window.up_to)
        if window.topics:
            query += f" AND topic IN ({','.join('?' * len(window.topics))})"
            params.extend(window.topics)
        query += " ORDER BY originator_version"
        if window.limit is not None:
            query += " LIMIT ?"
            params.append(window.limit)
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, params)
            return [
                StoredRow(row["originator_version"], row["topic"], row["state"], row["rowid"])
                for row in cursor.fetchall()
            ]
