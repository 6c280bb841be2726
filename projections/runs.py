"""Read model: one row per run, for background runs, their status and their result.

A run's row appears with its `MessagePosted` (status `queued`), turns `running` at
each `RunStarted` (a retry after `RunInterrupted(retry=True)` starts the same run
again: `attempt` counts the starts) and keeps its ending: `completed`, `failed`,
`cancelled` or `interrupted`. The owner comes from the conversation's
`ConversationStarted`, kept in a small side table of this view.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, get_args

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.utils import get_topic

from threadlog.domain.events import (
    ConversationEvent,
    ConversationStarted,
    MessageCompleted,
    MessagePosted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunProgressReported,
    RunStarted,
)
from threadlog.projections.runner import Applied, ReadModel
from threadlog.projections.views import Row, Sql, ViewSchema, from_micros, to_micros

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
ENDED: frozenset[str] = frozenset({"completed", "failed", "cancelled", "interrupted"})

_COLUMNS = (
    "run_id, conversation_id, owner, agent, model, status, attempt, progress, note, "
    "message_id, created_at, started_at, ended_at, reply_message_id, content, output, "
    "usage, cost_usd, duration_ms, error, error_message, cancel_reason, position, "
    "agent_id, agent_version"
)


@dataclass(frozen=True, kw_only=True)
class Run:
    run_id: str
    conversation_id: str
    owner: str
    agent: str
    model: str | None
    status: RunStatus
    attempt: int
    progress: float | None
    note: Any  # as stored: personal content is sealed (domain/content.py)
    message_id: str
    created_at: datetime
    started_at: datetime | None
    """When the latest attempt started."""
    ended_at: datetime | None
    reply_message_id: str | None
    content: Any  # as stored (sealed)
    """The assistant's reply; for a cancelled run, the part streamed before the cancel."""
    output: Any
    usage: dict[str, Any] | None
    cost_usd: float | None
    duration_ms: float | None
    error: str | None
    error_message: str | None
    cancel_reason: str | None
    position: int
    """The conversation position of the run's latest event this read model applies."""
    agent_id: str
    agent_version: int
    """The agent version the run's latest attempt used (0: before agents had versions)."""

    @property
    def ended(self) -> bool:
        return self.status in ENDED


@dataclass(frozen=True, kw_only=True)
class RunQuery:
    """Which runs to list; `after` is the (created_at µs, run_id) of the previous
    page's last row."""

    owner: str
    limit: int
    status: RunStatus | None = None
    conversation_id: str | None = None
    after: tuple[int, str] | None = None


class Runs(ReadModel):
    name = "runs"
    schema = ViewSchema(
        tables=("runs", "runs_owners"),
        statements=(
            "CREATE TABLE IF NOT EXISTS runs ("
            "run_id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, owner TEXT NOT NULL, "
            "agent TEXT NOT NULL, model TEXT, status TEXT NOT NULL, "
            "attempt INTEGER NOT NULL, progress DOUBLE PRECISION, note TEXT, "
            "message_id TEXT NOT NULL, created_at BIGINT NOT NULL, started_at BIGINT, "
            "ended_at BIGINT, reply_message_id TEXT, content TEXT, output TEXT, usage TEXT, "
            "cost_usd DOUBLE PRECISION, duration_ms DOUBLE PRECISION, error TEXT, "
            "error_message TEXT, cancel_reason TEXT, position BIGINT NOT NULL, "
            "agent_id TEXT NOT NULL DEFAULT '', agent_version INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS runs_by_creation "
            "ON runs (owner, created_at DESC, run_id DESC)",
            "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, started_at)",
            # Whose runs they are: MessagePosted does not carry the conversation's owner.
            "CREATE TABLE IF NOT EXISTS runs_owners ("
            "conversation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, agent TEXT NOT NULL)",
        ),
        version=3,  # 2: note and content as JSON (sealed values); 3: the agent version
    )
    topics: ClassVar[frozenset[str]] = frozenset(
        get_topic(cls)
        for cls in (
            ConversationStarted,
            MessagePosted,
            RunStarted,
            RunProgressReported,
            MessageCompleted,
            RunCompleted,
            RunFailed,
            RunCancelled,
            RunInterrupted,
        )
    )

    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        for item in events:
            self.process_event(item.event, sql)

    @singledispatchmethod
    def process_event(self, event: ConversationEvent, sql: Sql) -> None:
        """Only the registered event types change a run."""

    @process_event.register
    def _conversation(self, event: ConversationStarted, sql: Sql) -> None:
        sql.execute(
            "INSERT INTO runs_owners (conversation_id, owner, agent) VALUES (?, ?, ?)",
            (str(event.originator_id), event.owner, event.agent),
        )

    @process_event.register
    def _posted(self, event: MessagePosted, sql: Sql) -> None:
        # Queued until its RunStarted, which follows in the same save when no run is active.
        sql.execute(
            "INSERT INTO runs (run_id, conversation_id, owner, agent, status, attempt, "
            "message_id, created_at, position) "
            "SELECT ?, conversation_id, owner, agent, 'queued', 0, ?, ?, ? "
            "FROM runs_owners WHERE conversation_id = ?",
            (
                event.run_id,
                event.message_id,
                to_micros(event.timestamp),
                event.originator_version,
                str(event.originator_id),
            ),
        )

    @process_event.register
    def _started(self, event: RunStarted, sql: Sql) -> None:
        # A retry starts the same run again: a new attempt, its progress starts over.
        _update(
            sql,
            event,
            "status = 'running', attempt = attempt + 1, agent = ?, model = ?, "
            "started_at = ?, progress = NULL, note = NULL, agent_id = ?, agent_version = ?",
            (
                event.agent,
                event.model,
                to_micros(event.timestamp),
                event.agent_id,
                event.agent_version,
            ),
        )

    @process_event.register
    def _progress(self, event: RunProgressReported, sql: Sql) -> None:
        _update(sql, event, "progress = ?, note = ?", (event.percent, _json(event.note)))

    @process_event.register
    def _reply(self, event: MessageCompleted, sql: Sql) -> None:
        _update(
            sql,
            event,
            "reply_message_id = ?, content = ?, output = ?",
            (event.message_id, _json(event.content), _json(event.output)),
        )

    @process_event.register
    def _completed(self, event: RunCompleted, sql: Sql) -> None:
        _end(
            sql,
            event,
            "completed",
            "usage = ?, cost_usd = ?, duration_ms = ?",
            (_json(event.usage), event.cost_usd, event.duration_ms),
        )

    @process_event.register
    def _failed(self, event: RunFailed, sql: Sql) -> None:
        _end(sql, event, "failed", "error = ?, error_message = ?", (event.error, event.message))

    @process_event.register
    def _cancelled(self, event: RunCancelled, sql: Sql) -> None:
        _end(
            sql,
            event,
            "cancelled",
            "cancel_reason = ?, content = ?",
            (event.reason, _json(event.partial_content)),
        )

    @process_event.register
    def _interrupted(self, event: RunInterrupted, sql: Sql) -> None:
        if event.retry:
            return  # not an ending: the next attempt's RunStarted follows in the same save
        _end(
            sql,
            event,
            "interrupted",
            "error = 'interrupted', error_message = ?",
            (event.reason,),
        )


def _update(sql: Sql, event: Any, assignments: str, params: Sequence[Any]) -> None:
    sql.execute(
        f"UPDATE runs SET {assignments}, position = ? WHERE run_id = ?",  # noqa: S608
        (*params, event.originator_version, event.run_id),
    )


def _end(sql: Sql, event: Any, status: RunStatus, assignments: str, params: Sequence[Any]) -> None:
    _update(
        sql,
        event,
        f"status = ?, ended_at = ?, {assignments}",
        (status, to_micros(event.timestamp), *params),
    )


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def running_since(sql: Sql, started_before: datetime) -> list[tuple[str, str]]:
    """(run id, conversation id) of the runs running since before `started_before`."""
    sql.execute(
        "SELECT run_id, conversation_id FROM runs WHERE status = 'running' AND started_at < ?",
        (to_micros(started_before),),
    )
    return [(row["run_id"], row["conversation_id"]) for row in sql.fetchall()]


def get_run(sql: Sql, run_id: str) -> Run | None:
    sql.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))  # noqa: S608
    row = sql.fetchone()
    return _run(row) if row is not None else None


def list_runs(sql: Sql, query: RunQuery) -> list[Run]:
    """One page, newest first (ties broken by run id, descending)."""
    where = ["owner = ?"]
    params: list[Any] = [query.owner]
    if query.status is not None:
        where.append("status = ?")
        params.append(query.status)
    if query.conversation_id is not None:
        where.append("conversation_id = ?")
        params.append(query.conversation_id)
    if query.after is not None:
        at, run_id = query.after
        where.append("(created_at < ? OR (created_at = ? AND run_id < ?))")
        params.extend((at, at, run_id))
    params.append(query.limit)
    sql.execute(
        f"SELECT {_COLUMNS} FROM runs WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY created_at DESC, run_id DESC LIMIT ?",
        params,
    )
    return [_run(row) for row in sql.fetchall()]


def all_runs(sql: Sql) -> list[Run]:
    """Every row in run id order (for comparisons and audits)."""
    sql.execute(f"SELECT {_COLUMNS} FROM runs ORDER BY run_id")  # noqa: S608
    return [_run(row) for row in sql.fetchall()]


def _maybe_time(micros: int | None) -> datetime | None:
    return from_micros(micros) if micros is not None else None


def _maybe_json(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _run(row: Row) -> Run:
    return Run(
        run_id=row["run_id"],
        conversation_id=row["conversation_id"],
        owner=row["owner"],
        agent=row["agent"],
        model=row["model"],
        status=row["status"],
        attempt=row["attempt"],
        progress=row["progress"],
        note=_maybe_json(row["note"]),
        message_id=row["message_id"],
        created_at=from_micros(row["created_at"]),
        started_at=_maybe_time(row["started_at"]),
        ended_at=_maybe_time(row["ended_at"]),
        reply_message_id=row["reply_message_id"],
        content=_maybe_json(row["content"]),
        output=_maybe_json(row["output"]),
        usage=_maybe_json(row["usage"]),
        cost_usd=row["cost_usd"],
        duration_ms=row["duration_ms"],
        error=row["error"],
        error_message=row["error_message"],
        cancel_reason=row["cancel_reason"],
        position=row["position"],
        agent_id=row["agent_id"],
        agent_version=int(row["agent_version"]),
    )


def count_by_status(sql: Sql) -> dict[str, int]:
    """How many runs are in each status (for /metrics)."""
    sql.execute("SELECT status, COUNT(*) AS runs FROM runs GROUP BY status")
    return {str(row["status"]): int(row["runs"]) for row in sql.fetchall()}
