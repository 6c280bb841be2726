"""Read model: a conversation's messages, assembled, in position order.

User messages come from `MessagePosted`; assistant messages from `MessageCompleted`
(the whole reply, not its tokens). A message's position is its event's position.
An assistant message also carries its run's tool calls (name, args, result or error,
in order; those of the run's last attempt) and its structured output, if any.
Tool calls wait in `message_history_tool_calls` until their message completes.

A `HistoryCompacted` is a row too, role `compaction`, at its own position: its content
is the summary the model sees from then on in place of the turns up to its
`up_to_position`, and `compaction` says which those are and what it saved. The
messages themselves all stay.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import msgspec
from eventsourcing.utils import get_topic

from threadlog.domain.conversation import RUN_ENDINGS
from threadlog.domain.events import (
    ConversationEvent,
    HistoryCleared,
    HistoryCompacted,
    MessageCompleted,
    MessagePosted,
    ToolCallCompleted,
    ToolCallStarted,
)
from threadlog.projections.runner import Applied, ReadModel
from threadlog.projections.views import Row, Sql, ViewSchema, from_micros, to_micros

_NO_END = 2**63 - 1
"""Past every position (the store keeps them as 64-bit integers)."""

_COLUMNS = (
    "conversation_id, position, message_id, run_id, role, content, created_at, tool_calls, "
    "output, compaction"
)
COMPACTION_ROLE = "compaction"


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    tool_call_id: str
    tool_name: str
    args: Any
    result: Any
    error: Any


@dataclass(frozen=True, kw_only=True)
class Message:
    conversation_id: str
    position: int
    message_id: str
    run_id: str
    role: str
    content: Any
    """As stored: personal content is sealed (domain/content.py); readers open it."""
    created_at: datetime
    tool_calls: list[ToolCall] | None
    """The run's tool calls, for an assistant message (None for a user message)."""
    output: Any
    """The structured output of an assistant message (None when it answered in text)."""
    erased: bool = False
    """Set by readers that opened the content and found its owner's keys erased."""
    compaction: dict[str, Any] | None = None
    """A `compaction` row's: up_to_position, tokens_before, tokens_after, model, tokenizer."""


class MessageHistory(ReadModel):
    name = "message_history"
    schema = ViewSchema(
        tables=("message_history", "message_history_tool_calls"),
        statements=(
            "CREATE TABLE IF NOT EXISTS message_history ("
            "conversation_id TEXT NOT NULL, position BIGINT NOT NULL, "
            "message_id TEXT NOT NULL, run_id TEXT NOT NULL, role TEXT NOT NULL, "
            "content TEXT NOT NULL, created_at BIGINT NOT NULL, "
            "tool_calls TEXT, output TEXT, compaction TEXT, "
            "PRIMARY KEY (conversation_id, position))",
            "CREATE TABLE IF NOT EXISTS message_history_tool_calls ("
            "run_id TEXT NOT NULL, position BIGINT NOT NULL, tool_call_id TEXT NOT NULL, "
            "tool_name TEXT NOT NULL, args TEXT NOT NULL, result TEXT, error TEXT, "
            "PRIMARY KEY (run_id, position))",
        ),
        # 2: tool_calls and output; 3: content and tool errors as JSON (sealed values);
        # 4: HistoryCompacted rows (compaction)
        version=4,
    )
    topics: ClassVar[frozenset[str]] = frozenset(
        get_topic(cls)
        for cls in (
            MessagePosted,
            MessageCompleted,
            HistoryCleared,
            HistoryCompacted,
            ToolCallStarted,
            ToolCallCompleted,
            *RUN_ENDINGS,
        )
    )

    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        # In order: a HistoryCleared removes only the rows before it, a message takes
        # the tool calls recorded before it. Plain INSERTs: applying an event twice
        # would violate a primary key and fail the batch loudly rather than hide a
        # duplicate.
        # Most runs call no tool: asking the table once per batch which do keeps the
        # batch's statements unread (one round trip), instead of a query per reply.
        completed = [i.event.run_id for i in events if isinstance(i.event, MessageCompleted)]
        with_calls = _runs_with_calls(sql, completed)
        for item in events:
            if isinstance(item.event, ToolCallStarted):
                with_calls.add(item.event.run_id)
            self._apply(sql, item.event, with_calls)

    def _apply(self, sql: Sql, event: ConversationEvent, with_calls: set[str]) -> None:
        if isinstance(event, HistoryCleared):
            sql.execute(
                "DELETE FROM message_history WHERE conversation_id = ?",
                (str(event.originator_id),),
            )
        elif isinstance(event, RUN_ENDINGS):
            # Calls no message took: of a run that failed, was cancelled or
            # interrupted (a retried run starts over; its earlier attempt's calls go).
            sql.execute("DELETE FROM message_history_tool_calls WHERE run_id = ?", (event.run_id,))
        elif isinstance(event, ToolCallStarted):
            sql.execute(
                "INSERT INTO message_history_tool_calls "
                "(run_id, position, tool_call_id, tool_name, args) VALUES (?, ?, ?, ?, ?)",
                (
                    event.run_id,
                    event.originator_version,
                    event.tool_call_id,
                    event.tool_name,
                    _json(event.args),
                ),
            )
        elif isinstance(event, ToolCallCompleted):
            sql.execute(
                "UPDATE message_history_tool_calls SET result = ?, error = ? "
                "WHERE run_id = ? AND tool_call_id = ?",
                (_json(event.result), _json(event.error), event.run_id, event.tool_call_id),
            )
        elif isinstance(event, HistoryCompacted):
            _insert_compaction(sql, event)
        elif isinstance(event, MessagePosted):
            _insert_message(sql, event, tool_calls=None, output=None)
        elif isinstance(event, MessageCompleted):
            calls = _take_tool_calls(sql, event.run_id) if event.run_id in with_calls else []
            output = None if event.output is None else _json(event.output)
            _insert_message(sql, event, tool_calls=_json(calls), output=output)


def _insert_message(
    sql: Sql,
    event: MessagePosted | MessageCompleted,
    *,
    tool_calls: str | None,
    output: str | None,
) -> None:
    sql.execute(
        f"INSERT INTO message_history ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            str(event.originator_id),
            event.originator_version,
            event.message_id,
            event.run_id,
            event.role,
            _json(event.content),
            to_micros(event.timestamp),
            tool_calls,
            output,
            None,
        ),
    )


def _insert_compaction(sql: Sql, event: HistoryCompacted) -> None:
    """The compaction's row: its id is the event's, its content the (sealed) summary."""
    compaction = {
        "up_to_position": event.up_to_position,
        "tokens_before": event.tokens_before,
        "tokens_after": event.tokens_after,
        "model": event.model,
        "tokenizer": event.tokenizer,
    }
    sql.execute(
        f"INSERT INTO message_history ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        (
            str(event.originator_id),
            event.originator_version,
            str(event.event_id),
            event.run_id,
            COMPACTION_ROLE,
            _json(event.summary),
            to_micros(event.timestamp),
            None,
            None,
            _json(compaction),
        ),
    )


def _runs_with_calls(sql: Sql, run_ids: list[str]) -> set[str]:
    """Which of the runs have tool calls waiting (recorded in earlier batches)."""
    if not run_ids:
        return set()
    marks = ", ".join("?" for _ in run_ids)
    sql.execute(
        f"SELECT DISTINCT run_id FROM message_history_tool_calls WHERE run_id IN ({marks})",  # noqa: S608
        run_ids,
    )
    return {row["run_id"] for row in sql.fetchall()}


def _take_tool_calls(sql: Sql, run_id: str) -> list[dict[str, Any]]:
    """The run's tool calls in order (as JSON-ready objects), removed from the waiting table."""
    sql.execute(
        "SELECT tool_call_id, tool_name, args, result, error FROM message_history_tool_calls "
        "WHERE run_id = ? ORDER BY position",
        (run_id,),
    )
    calls = [
        {
            "tool_call_id": row["tool_call_id"],
            "tool_name": row["tool_name"],
            "args": _unjson(row["args"]),
            "result": _unjson(row["result"]),
            "error": _unjson(row["error"]),
        }
        for row in sql.fetchall()
    ]
    sql.execute("DELETE FROM message_history_tool_calls WHERE run_id = ?", (run_id,))
    return calls


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _unjson(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


def read_messages(
    sql: Sql,
    conversation_id: str,
    *,
    after: int,
    limit: int,
    before: int | None = None,
    newest_first: bool = False,
) -> list[Message]:
    """Messages with `after` < position < `before`, oldest first, or with `newest_first`
    the newest of them first. Either way one range scan of the primary key
    (conversation_id, position): a page from the newest end of a conversation of 5,000
    messages costs what it costs in one of 5."""
    order = "DESC" if newest_first else "ASC"
    sql.execute(
        f"SELECT {_COLUMNS} FROM message_history "  # noqa: S608
        "WHERE conversation_id = ? AND position > ? AND position < ? "
        f"ORDER BY position {order} LIMIT ?",
        (conversation_id, after, _NO_END if before is None else before, limit),
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
        content=_unjson(row["content"]),
        created_at=from_micros(row["created_at"]),
        tool_calls=None
        if row["tool_calls"] is None
        else [ToolCall(**call) for call in _unjson(row["tool_calls"])],
        output=_unjson(row["output"]),
        compaction=_unjson(row["compaction"]),
    )
