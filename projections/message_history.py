"""Read model: a conversation's messages, assembled, in position order.

User messages come from `MessagePosted`; assistant messages from `MessageCompleted`
(the whole reply, not its tokens). A message's position is its event's position.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from eventsourcing.utils import get_topic

from threadlog.domain.events import HistoryCleared, MessageCompleted, MessagePosted
from threadlog.projections.runner import Applied, ReadModel
from threadlog.projections.views import Row, Sql, ViewSchema, from_micros, to_micros

_COLUMNS = "conversation_id, position, message_id, run_id, role, content, created_at"


@dataclass(frozen=True, kw_only=True)
class Message:
    conversation_id: str
    position: int
    message_id: str
    run_id: str
    role: str
    content: str
    created_at: datetime


class MessageHistory(ReadModel):
    name = "message_history"
    schema = ViewSchema(
        tables=("message_history",),
        statements=(
            "CREATE TABLE IF NOT EXISTS message_history ("
            "conversation_id TEXT NOT NULL, position BIGINT NOT NULL, "
            "message_id TEXT NOT NULL, run_id TEXT NOT NULL, role TEXT NOT NULL, "
            "content TEXT NOT NULL, created_at BIGINT NOT NULL, "
            "PRIMARY KEY (conversation_id, position))",
        ),
    )
    topics: ClassVar[frozenset[str]] = frozenset(
        get_topic(cls) for cls in (MessagePosted, MessageCompleted, HistoryCleared)
    )

    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        # In order: a HistoryCleared removes only the rows before it. Plain INSERTs:
        # applying an event twice would violate the primary key and fail the batch
        # loudly rather than hide a duplicate.
        for item in events:
            event = item.event
            if isinstance(event, HistoryCleared):
                sql.execute(
                    "DELETE FROM message_history WHERE conversation_id = ?",
                    (str(event.originator_id),),
                )
                continue
            assert isinstance(event, MessagePosted | MessageCompleted)
            sql.execute(
                f"INSERT INTO message_history ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    str(event.originator_id),
                    event.originator_version,
                    event.message_id,
                    event.run_id,
                    event.role,
                    event.content,
                    to_micros(event.timestamp),
                ),
            )


def read_messages(sql: Sql, conversation_id: str, *, after: int, limit: int) -> list[Message]:
    sql.execute(
        f"SELECT {_COLUMNS} FROM message_history "  # noqa: S608
        "WHERE conversation_id = ? AND position > ? ORDER BY position LIMIT ?",
        (conversation_id, after, limit),
    )
    return [_message(row) for row in sql.fetchall()]


def all_messages(sql: Sql) -> list[Message]:
    sql.execute(
        f"SELECT {_COLUMNS} FROM message_history ORDER BY conversation_id, position"  # noqa: S608
    )
    return [_message(row) for row in sql.fetchall()]


def _message(row: Row) -> Message:
    return Message(
        conversation_id=row["conversation_id"],
        position=row["position"],
        message_id=row["message_id"],
        run_id=row["run_id"],
        role=row["role"],
        content=row["content"],
        created_at=from_micros(row["created_at"]),
    )
