"""The global audit log: every conversation's events in global order, as written.

Events are served as they were stored (their schema version and data, not upcast),
so each one re-hashes to its `hash` (docs/audit.md). The cursor is the global
position (the store's notification id).

Reading is keyset-paged by global position, and each page examines at most
`SCAN_BUDGET` global positions: filters the database cannot apply (owner, agent,
time range) may leave a page short, or empty, with a `next` cursor to go on from.
Pages never reach past `stop`, the store's last position when the read began.

The owner and agent of a conversation come from its `ConversationStarted` record
(position 1), read in one query per batch of rows and cached: always consistent
with the log, unlike a read model that may lag it.
"""

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Composed, Identifier

from threadlog.domain.application import ConversationService
from threadlog.domain.events import ConversationEvent, ConversationStarted
from threadlog.infra.store.audit import written_event
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.envelope import EventEnvelope, served

SCAN_BUDGET = 20_000
"""Global positions one page examines at most."""
SCAN_BATCH = 1000
"""Rows read from the store per query."""
DIRECTORY_SIZE = 10_000
"""Conversations whose owner and agent are kept in memory per reader."""


@cache
def event_types() -> dict[str, type[ConversationEvent]]:
    """Every conversation event type, by name."""
    found: dict[str, type[ConversationEvent]] = {}
    pending: list[type[ConversationEvent]] = [ConversationEvent]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.setdefault(sub.__name__, sub)
            pending.append(sub)
    return found


def topics_for(type_names: Iterable[str]) -> tuple[str, ...]:
    """The stored topics of the named event types (names already validated)."""
    types = event_types()
    return tuple(sorted(get_topic(types[name]) for name in set(type_names)))


class UnreadableEvent(ValueError):
    """A stored record no longer decodes (its conversation's chain is broken there)."""

    def __init__(self, conversation_id: UUID, global_position: int, reason: str) -> None:
        super().__init__(
            f"the event at global position {global_position} (conversation "
            f"{conversation_id}) does not decode: {reason}"
        )
        self.conversation_id = conversation_id
        self.global_position = global_position


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Which events to read; every filter given must hold. `since` is inclusive,
    `until` exclusive."""

    conversation_id: UUID | None = None
    owner: str | None = None
    agent: str | None = None
    topics: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    @property
    def by_starter(self) -> bool:
        return self.owner is not None or self.agent is not None


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: list[EventEnvelope]
    next: int | None
    """Where to go on from (pass as `after`), or None at `stop`."""


_Row = tuple[StoredEvent, int]


class AuditLog:
    def __init__(self, service: ConversationService, keys: ContentKeys | None = None) -> None:
        """`keys`: to serve content opened (with the sealed values kept for re-hashing)."""
        self._mapper: Mapper[UUID] = service.mapper
        self._keys = keys
        recorder = service.recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            self._rows: _Rows = _PostgresRows(recorder)
        elif isinstance(recorder, SQLiteApplicationRecorder):
            self._rows = _SQLiteRows(recorder)
        else:
            raise TypeError(f"unsupported recorder {type(recorder).__name__}")
        self.directory = ConversationDirectory(service, self._rows)

    def page(self, query: AuditQuery, *, after: int, limit: int, stop: int) -> AuditPage:
        items: list[EventEnvelope] = []
        cursor = after
        budget_end = min(after + SCAN_BUDGET, stop)
        while len(items) < limit and cursor < budget_end:
            rows = self._rows.select(
                after=cursor,
                up_to=budget_end,
                conversation_id=query.conversation_id,
                topics=query.topics,
                limit=SCAN_BATCH,
            )
            if query.by_starter:
                self.directory.learn(UUID(str(stored.originator_id)) for stored, _ in rows)
            for stored, global_position in rows:
                cursor = global_position
                item = self._matching(query, stored, global_position)
                if item is not None:
                    items.append(item)
                    if len(items) == limit:
                        break
            if len(rows) < SCAN_BATCH and len(items) < limit:
                cursor = budget_end
        return AuditPage(items=items, next=cursor if cursor < stop else None)

    def export(self, query: AuditQuery, *, after: int, stop: int) -> Iterator[list[EventEnvelope]]:
        """Every matching event after `after` up to `stop`, a page at a time."""
        cursor: int | None = after
        while cursor is not None:
            page = self.page(query, after=cursor, limit=SCAN_BATCH, stop=stop)
            if page.items:
                yield page.items
            cursor = page.next

    def last_position(self) -> int:
        return self._rows.max_position()

    def _matching(
        self, query: AuditQuery, stored: StoredEvent, global_position: int
    ) -> EventEnvelope | None:
        conversation_id = UUID(str(stored.originator_id))
        if query.by_starter:
            started = self.directory.get(conversation_id)
            if started is None:
                return None
            owner, agent = started
            if query.owner is not None and owner != query.owner:
                return None
            if query.agent is not None and agent != query.agent:
                return None
        try:
            written = written_event(self._mapper, stored)
        except ValueError as error:
            raise UnreadableEvent(conversation_id, global_position, str(error)) from None
        document = written.document
        if query.since is not None or query.until is not None:
            at = datetime.fromisoformat(document["timestamp"])
            if query.since is not None and at < query.since:
                return None
            if query.until is not None and at >= query.until:
                return None
        item = EventEnvelope(global_position=global_position, hash=written.hash, **document)
        return item if self._keys is None else served(item, self._keys)


class ConversationDirectory:
    """Conversations' owner and agent, from their ConversationStarted records (cached)."""

    def __init__(self, service: ConversationService, rows: "_Rows") -> None:
        self._mapper: Mapper[UUID] = service.mapper
        self._rows = rows
        self._known: OrderedDict[UUID, tuple[str, str] | None] = OrderedDict()

    def learn(self, conversation_ids: Iterable[UUID]) -> None:
        unknown = {c for c in conversation_ids if c not in self._known}
        if not unknown:
            return
        found: dict[UUID, tuple[str, str]] = {}
        for stored in self._rows.first_events(sorted(unknown)):
            started = self._mapper.to_domain_event(stored)
            if isinstance(started, ConversationStarted):
                found[started.originator_id] = (started.owner, started.agent)
        for conversation_id in unknown:
            self._remember(conversation_id, found.get(conversation_id))

    def get(self, conversation_id: UUID) -> tuple[str, str] | None:
        """(owner, agent), or None when its first event is not a ConversationStarted."""
        if conversation_id not in self._known:
            self.learn([conversation_id])
        self._known.move_to_end(conversation_id)
        return self._known[conversation_id]

    def _remember(self, conversation_id: UUID, starter: tuple[str, str] | None) -> None:
        self._known[conversation_id] = starter
        while len(self._known) > DIRECTORY_SIZE:
            self._known.popitem(last=False)


class _Rows:
    def select(
        self,
        *,
        after: int,
        up_to: int,
        conversation_id: UUID | None,
        topics: tuple[str, ...],
        limit: int,
    ) -> list[_Row]:
        raise NotImplementedError

    def first_events(self, conversation_ids: list[UUID]) -> list[StoredEvent]:
        raise NotImplementedError

    def max_position(self) -> int:
        raise NotImplementedError


class _PostgresRows(_Rows):
    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self._recorder = recorder
        self._table = SQL("{}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )

    def _fetch(self, query: SQL | Composed, params: list[Any]) -> list[dict[str, Any]]:
        with self._recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall())

    def select(
        self,
        *,
        after: int,
        up_to: int,
        conversation_id: UUID | None,
        topics: tuple[str, ...],
        limit: int,
    ) -> list[_Row]:
        query = SQL(
            "SELECT originator_id, originator_version, topic, state, notification_id FROM {} "
            "WHERE notification_id > %s AND notification_id <= %s"
        ).format(self._table)
        params: list[Any] = [after, up_to]
        if conversation_id is not None:
            query += SQL(" AND originator_id = %s")
            params.append(conversation_id)
        if topics:
            query += SQL(" AND topic = ANY(%s)")
            params.append(list(topics))
        query += SQL(" ORDER BY notification_id LIMIT %s")
        params.append(limit)
        return [(_stored(row), int(row["notification_id"])) for row in self._fetch(query, params)]

    def first_events(self, conversation_ids: list[UUID]) -> list[StoredEvent]:
        query = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {} "
            "WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(self._table)
        return [_stored(row) for row in self._fetch(query, [conversation_ids])]

    def max_position(self) -> int:
        return self._recorder.max_notification_id() or 0


class _SQLiteRows(_Rows):
    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self._recorder = recorder
        self._table = recorder.events_table_name

    def _fetch(self, query: str, params: list[Any]) -> list[Any]:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall())

    def select(
        self,
        *,
        after: int,
        up_to: int,
        conversation_id: UUID | None,
        topics: tuple[str, ...],
        limit: int,
    ) -> list[_Row]:
        query = (
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {self._table} WHERE rowid > ? AND rowid <= ?"
        )
        params: list[Any] = [after, up_to]
        if conversation_id is not None:
            query += " AND originator_id = ?"
            params.append(conversation_id.hex)
        if topics:
            query += f" AND topic IN ({','.join('?' * len(topics))})"
            params.extend(topics)
        query += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        return [(_stored(row), int(row["rowid"])) for row in self._fetch(query, params)]

    def first_events(self, conversation_ids: list[UUID]) -> list[StoredEvent]:
        found: list[StoredEvent] = []
        # SQLite caps a statement's parameters; a batch's conversations fit in a few.
        for start in range(0, len(conversation_ids), 500):
            chunk = [c.hex for c in conversation_ids[start : start + 500]]
            query = (
                "SELECT originator_id, originator_version, topic, state "  # noqa: S608
                f"FROM {self._table} WHERE originator_version = 1 "
                f"AND originator_id IN ({','.join('?' * len(chunk))})"
            )
            found.extend(_stored(row) for row in self._fetch(query, chunk))
        return found

    def max_position(self) -> int:
        return self._recorder.max_notification_id() or 0


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        originator_id=UUID(str(row["originator_id"])),
        originator_version=int(row["originator_version"]),
        topic=str(row["topic"]),
        state=bytes(row["state"]),
    )
