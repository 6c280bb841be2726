"""Read model: one row per conversation, for lists newest activity first.

`last_activity_at` and `position` follow the conversation's latest event of any
type (token events included); they are written once per conversation per batch.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, get_args

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.utils import get_topic

from threadlog.domain.agent import TRIAL_METADATA
from threadlog.domain.events import (
    ConversationArchived,
    ConversationEvent,
    ConversationRenamed,
    ConversationStarted,
    MessageCompleted,
    MessagePosted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
)
from threadlog.projections.runner import Applied, ReadModel
from threadlog.projections.views import Row, Sql, ViewSchema, from_micros, to_micros

RunStatus = Literal["idle", "running", "failed"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)

_COLUMNS = (
    "id, owner, agent, title, created_at, last_activity_at, message_count, run_status, position"
)


@dataclass(frozen=True, kw_only=True)
class ConversationSummary:
    id: str
    owner: str
    agent: str
    title: str
    created_at: datetime
    last_activity_at: datetime
    message_count: int
    run_status: RunStatus
    position: int


@dataclass(frozen=True, kw_only=True)
class ListQuery:
    """Which conversations to list; `after` is the (last_activity_at µs, id) of the
    previous page's last row."""

    owner: str
    limit: int
    agent: str | None = None
    status: RunStatus | None = None
    title_contains: str | None = None
    archived: bool = False
    after: tuple[int, str] | None = None


_ROWS_PER_INSERT = 100  # 1,000 parameters: far below SQLite's limit


@dataclass(kw_only=True)
class _Row:
    """A row started in this batch, before the batch's later changes."""

    owner: str
    agent: str
    title: str
    created_at: int
    last_activity_at: int
    position: int


@dataclass
class _Change:
    """What one batch does to one conversation's row."""

    row: _Row | None = None
    messages: int = 0
    title: str | None = None
    archived: bool = False
    status: RunStatus | None = None
    activity: tuple[int, int] | None = None  # (position, last_activity_at µs) of its latest event


class ConversationList(ReadModel):
    name = "conversation_list"
    schema = ViewSchema(
        tables=("conversation_list",),
        statements=(
            "CREATE TABLE IF NOT EXISTS conversation_list ("
            "id TEXT PRIMARY KEY, owner TEXT NOT NULL, agent TEXT NOT NULL, "
            "title TEXT NOT NULL, title_folded TEXT NOT NULL, created_at BIGINT NOT NULL, "
            "last_activity_at BIGINT NOT NULL, message_count INTEGER NOT NULL, "
            "run_status TEXT NOT NULL, position BIGINT NOT NULL, "
            "archived INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS conversation_list_by_activity "
            "ON conversation_list (owner, last_activity_at DESC, id DESC)",
        ),
    )
    topics: ClassVar[frozenset[str]] = frozenset(
        get_topic(cls)
        for cls in (
            ConversationStarted,
            ConversationRenamed,
            ConversationArchived,
            MessagePosted,
            MessageCompleted,
            RunStarted,
            RunCompleted,
            RunFailed,
            RunCancelled,
        )
    )
    # Token events only move a conversation's activity: the runner hands over the
    # latest event of each conversation instead of decoding every token.
    follows_activity = True

    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        # A batch's events are folded per conversation first: one INSERT (of the rows
        # it starts, in their final state) and one UPDATE per other conversation, not a
        # statement per event.
        changes: dict[str, _Change] = {}
        process = self.process_event  # bound once: each lookup builds a dispatch wrapper
        for item in events:
            event = item.event
            key = str(event.originator_id)
            change = changes.get(key)
            if change is None:
                change = changes[key] = _Change()
            process(event, change)
        for item in latest:
            event = item.event
            key = str(event.originator_id)
            change = changes.get(key)
            if change is None:
                change = changes[key] = _Change()
            change.activity = (event.originator_version, to_micros(event.timestamp))
        started = [(key, change) for key, change in changes.items() if change.row is not None]
        for start in range(0, len(started), _ROWS_PER_INSERT):
            _insert(sql, started[start : start + _ROWS_PER_INSERT])
        for key, change in changes.items():
            if change.row is None:
                _update(sql, key, change)

    @singledispatchmethod
    def process_event(self, event: ConversationEvent, change: _Change) -> None:
        """Most events only move the conversation's activity (done per batch)."""

    @process_event.register
    def _started(self, event: ConversationStarted, change: _Change) -> None:
        if event.metadata.get(TRIAL_METADATA) is True:
            return  # a trial of an agent: no row, so its later events change nothing
        at = to_micros(event.timestamp)
        change.row = _Row(
            owner=event.owner,
            agent=event.agent,
            title=storable(event.title),
            created_at=at,
            last_activity_at=at,
            position=event.originator_version,
        )

    @process_event.register(MessagePosted)
    @process_event.register(MessageCompleted)
    def _message(self, event: ConversationEvent, change: _Change) -> None:
        change.messages += 1

    @process_event.register
    def _renamed(self, event: ConversationRenamed, change: _Change) -> None:
        change.title = storable(event.title)

    @process_event.register
    def _archived(self, event: ConversationArchived, change: _Change) -> None:
        change.archived = True

    @process_event.register
    def _run_started(self, event: RunStarted, change: _Change) -> None:
        change.status = "running"

    @process_event.register(RunCompleted)
    @process_event.register(RunCancelled)
    def _run_ended(self, event: ConversationEvent, change: _Change) -> None:
        change.status = "idle"

    @process_event.register
    def _run_failed(self, event: RunFailed, change: _Change) -> None:
        change.status = "failed"


def _insert(sql: Sql, started: Sequence[tuple[str, _Change]]) -> None:
    values: list[Any] = []
    for key, change in started:
        row = change.row
        assert row is not None
        title = change.title if change.title is not None else row.title
        position, activity = row.position, row.last_activity_at
        if change.activity is not None and change.activity[0] > position:
            position, activity = change.activity
        values += (
            key,
            row.owner,
            row.agent,
            title,
            row.created_at,
            activity,
            change.messages,
            change.status or "idle",
            position,
            title.casefold(),
            int(change.archived),
        )
    placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(started))
    sql.execute(
        f"INSERT INTO conversation_list ({_COLUMNS}, title_folded, archived) "  # noqa: S608
        f"VALUES {placeholders}",
        values,
    )


def storable(title: str) -> str:
    """PostgreSQL text cannot hold NUL: the list shows U+FFFD instead (the events keep it)."""
    return title.replace("\x00", "\ufffd")


def _update(sql: Sql, key: str, change: _Change) -> None:
    assignments: list[str] = []
    params: list[Any] = []
    if change.messages:
        assignments.append("message_count = message_count + ?")
        params.append(change.messages)
    if change.title is not None:
        assignments.append("title = ?, title_folded = ?")
        params += (change.title, change.title.casefold())
    if change.archived:
        assignments.append("archived = 1")
    if change.status is not None:
        assignments.append("run_status = ?")
        params.append(change.status)
    if change.activity is not None:
        # Every right-hand side sees the old row: both compare the old position.
        position, at = change.activity
        assignments.append(
            "last_activity_at = CASE WHEN position < ? THEN ? ELSE last_activity_at END, "
            "position = CASE WHEN position < ? THEN ? ELSE position END"
        )
        params += (position, at, position, position)
    if not assignments:
        return
    sql.execute(
        f"UPDATE conversation_list SET {', '.join(assignments)} WHERE id = ?",  # noqa: S608
        [*params, key],
    )


def list_conversations(sql: Sql, query: ListQuery) -> list[ConversationSummary]:
    """One page, newest activity first (ties broken by id, descending)."""
    where = ["owner = ?", "archived = ?"]
    params: list[Any] = [query.owner, int(query.archived)]
    if query.agent is not None:
        where.append("agent = ?")
        params.append(query.agent)
    if query.status is not None:
        where.append("run_status = ?")
        params.append(query.status)
    if query.title_contains:
        where.append("title_folded LIKE ? ESCAPE '\\'")
        params.append(f"%{_escape_like(query.title_contains.casefold())}%")
    if query.after is not None:
        at, conversation_id = query.after
        where.append("(last_activity_at < ? OR (last_activity_at = ? AND id < ?))")
        params.extend((at, at, conversation_id))
    params.append(query.limit)
    sql.execute(
        f"SELECT {_COLUMNS} FROM conversation_list WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY last_activity_at DESC, id DESC LIMIT ?",
        params,
    )
    return [_summary(row) for row in sql.fetchall()]


def all_rows(sql: Sql) -> list[ConversationSummary]:
    """Every row in id order (for comparisons and audits)."""
    sql.execute(f"SELECT {_COLUMNS} FROM conversation_list ORDER BY id")  # noqa: S608
    return [_summary(row) for row in sql.fetchall()]


def _summary(row: Row) -> ConversationSummary:
    return ConversationSummary(
        id=row["id"],
        owner=row["owner"],
        agent=row["agent"],
        title=row["title"],
        created_at=from_micros(row["created_at"]),
        last_activity_at=from_micros(row["last_activity_at"]),
        message_count=row["message_count"],
        run_status=row["run_status"],
        position=row["position"],
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
