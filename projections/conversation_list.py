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
        for item in events:
            self.process_event(item.event, sql)
        for item in latest:
            event = item.event
            sql.execute(
                "UPDATE conversation_list SET position = ?, last_activity_at = ? "
                "WHERE id = ? AND position < ?",
                (
                    event.originator_version,
                    to_micros(event.timestamp),
                    str(event.originator_id),
                    event.originator_version,
                ),
            )

    @singledispatchmethod
    def process_event(self, event: ConversationEvent, sql: Sql) -> None:
        """Most events only move the conversation's activity (done per batch)."""

    @process_event.register
    def _started(self, event: ConversationStarted, sql: Sql) -> None:
        at = to_micros(event.timestamp)
        sql.execute(
            f"INSERT INTO conversation_list ({_COLUMNS}, title_folded) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, 0, 'idle', ?, ?)",
            (
                str(event.originator_id),
                event.owner,
                event.agent,
                event.title,
                at,
                at,
                event.originator_version,
                event.title.casefold(),
            ),
        )

    @process_event.register(MessagePosted)
    @process_event.register(MessageCompleted)
    def _message(self, event: ConversationEvent, sql: Sql) -> None:
        sql.execute(
            "UPDATE conversation_list SET message_count = message_count + 1 WHERE id = ?",
            (str(event.originator_id),),
        )

    @process_event.register
    def _renamed(self, event: ConversationRenamed, sql: Sql) -> None:
        sql.execute(
            "UPDATE conversation_list SET title = ?, title_folded = ? WHERE id = ?",
            (event.title, event.title.casefold(), str(event.originator_id)),
        )

    @process_event.register
    def _archived(self, event: ConversationArchived, sql: Sql) -> None:
        sql.execute(
            "UPDATE conversation_list SET archived = 1 WHERE id = ?", (str(event.originator_id),)
        )

    @process_event.register
    def _run_started(self, event: RunStarted, sql: Sql) -> None:
        _set_status(sql, event, "running")

    @process_event.register(RunCompleted)
    @process_event.register(RunCancelled)
    def _run_ended(self, event: ConversationEvent, sql: Sql) -> None:
        _set_status(sql, event, "idle")

    @process_event.register
    def _run_failed(self, event: RunFailed, sql: Sql) -> None:
        _set_status(sql, event, "failed")


def _set_status(sql: Sql, event: ConversationEvent, status: RunStatus) -> None:
    sql.execute(
        "UPDATE conversation_list SET run_status = ? WHERE id = ?",
        (status, str(event.originator_id)),
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
