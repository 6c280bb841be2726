"""Read model: runs, messages and tool calls counted, for statistics and usage.

One row per run (`run_stats_runs`): its agent, model, start (the first `RunStarted`;
a retry after `RunInterrupted(retry=True)` is another attempt of the same row), its
outcome (`running` until exactly one of `RunCompleted`, `RunFailed`, `RunCancelled`,
`RunInterrupted(retry=False)` ends it), and what `RunCompleted` reports: tokens,
cost, duration and time to first token. Per conversation: its owner, agent and start
(`run_stats_conversations`), messages by role (`run_stats_messages`) and tool calls
by tool name (`run_stats_tools`). Usage groups runs by the day they started, their
agent, or their conversation's owner.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
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
    RunStarted,
    ToolCallCompleted,
    ToolCallStarted,
)
from threadlog.projections.runner import Applied, ReadModel
from threadlog.projections.views import Row, Sql, ViewSchema, from_micros, to_micros

Outcome = Literal["running", "completed", "failed", "cancelled", "interrupted"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
GroupBy = Literal["day", "agent", "user"]
GROUP_BYS: tuple[str, ...] = get_args(GroupBy)

_MICROS_PER_DAY = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1)


class RunStats(ReadModel):
    name = "run_stats"
    schema = ViewSchema(
        tables=(
            "run_stats_conversations",
            "run_stats_runs",
            "run_stats_messages",
            "run_stats_tools",
        ),
        statements=(
            "CREATE TABLE IF NOT EXISTS run_stats_conversations ("
            "id TEXT PRIMARY KEY, owner TEXT NOT NULL, agent TEXT NOT NULL, "
            "created_at BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS run_stats_runs ("
            "run_id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, agent TEXT NOT NULL, "
            "model TEXT NOT NULL, started_at BIGINT NOT NULL, attempts INTEGER NOT NULL, "
            "outcome TEXT NOT NULL, ended_at BIGINT, "
            "input_tokens BIGINT NOT NULL DEFAULT 0, output_tokens BIGINT NOT NULL DEFAULT 0, "
            "cost_usd DOUBLE PRECISION, duration_ms DOUBLE PRECISION, "
            "time_to_first_token_ms DOUBLE PRECISION, "
            "agent_id TEXT NOT NULL DEFAULT '', agent_version INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS run_stats_runs_by_conversation "
            "ON run_stats_runs (conversation_id)",
            "CREATE INDEX IF NOT EXISTS run_stats_runs_by_start ON run_stats_runs (started_at)",
            "CREATE TABLE IF NOT EXISTS run_stats_messages ("
            "conversation_id TEXT NOT NULL, role TEXT NOT NULL, messages INTEGER NOT NULL, "
            "PRIMARY KEY (conversation_id, role))",
            "CREATE TABLE IF NOT EXISTS run_stats_tools ("
            "conversation_id TEXT NOT NULL, tool_name TEXT NOT NULL, calls INTEGER NOT NULL, "
            "errors INTEGER NOT NULL, PRIMARY KEY (conversation_id, tool_name))",
        ),
        version=2,  # 2: the agent id and version each run used
    )
    topics: ClassVar[frozenset[str]] = frozenset(
        get_topic(cls)
        for cls in (
            ConversationStarted,
            MessagePosted,
            MessageCompleted,
            RunStarted,
            ToolCallStarted,
            ToolCallCompleted,
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
        """Events of other types change no statistic."""

    @process_event.register
    def _started(self, event: ConversationStarted, sql: Sql) -> None:
        sql.execute(
            "INSERT INTO run_stats_conversations (id, owner, agent, created_at) "
            "VALUES (?, ?, ?, ?)",
            (str(event.originator_id), event.owner, event.agent, to_micros(event.timestamp)),
        )

    @process_event.register(MessagePosted)
    @process_event.register(MessageCompleted)
    def _message(self, event: MessagePosted | MessageCompleted, sql: Sql) -> None:
        sql.execute(
            "INSERT INTO run_stats_messages (conversation_id, role, messages) VALUES (?, ?, 1) "
            "ON CONFLICT (conversation_id, role) "
            "DO UPDATE SET messages = run_stats_messages.messages + 1",
            (str(event.originator_id), event.role),
        )

    @process_event.register
    def _run_started(self, event: RunStarted, sql: Sql) -> None:
        # A retry starts the same run again: one more attempt, running again.
        sql.execute(
            "INSERT INTO run_stats_runs (run_id, conversation_id, agent, model, started_at, "
            "attempts, outcome, agent_id, agent_version) "
            "VALUES (?, ?, ?, ?, ?, 1, 'running', ?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET "
            "attempts = run_stats_runs.attempts + 1, outcome = 'running'",
            (
                event.run_id,
                str(event.originator_id),
                event.agent,
                event.model,
                to_micros(event.timestamp),
                event.agent_id,
                event.agent_version,
            ),
        )

    @process_event.register
    def _tool_called(self, event: ToolCallStarted, sql: Sql) -> None:
        _count_tool(sql, event, calls=1, errors=0)

    @process_event.register
    def _tool_done(self, event: ToolCallCompleted, sql: Sql) -> None:
        if event.error is not None:
            _count_tool(sql, event, calls=0, errors=1)

    @process_event.register
    def _completed(self, event: RunCompleted, sql: Sql) -> None:
        sql.execute(
            "UPDATE run_stats_runs SET outcome = 'completed', ended_at = ?, "
            "input_tokens = ?, output_tokens = ?, cost_usd = ?, duration_ms = ?, "
            "time_to_first_token_ms = ? WHERE run_id = ?",
            (
                to_micros(event.timestamp),
                int(event.usage.get("input_tokens") or 0),
                int(event.usage.get("output_tokens") or 0),
                event.cost_usd,
                event.duration_ms,
                event.time_to_first_token_ms,
                event.run_id,
            ),
        )

    @process_event.register
    def _failed(self, event: RunFailed, sql: Sql) -> None:
        _end(sql, event, "failed")

    @process_event.register
    def _cancelled(self, event: RunCancelled, sql: Sql) -> None:
        _end(sql, event, "cancelled")

    @process_event.register
    def _interrupted(self, event: RunInterrupted, sql: Sql) -> None:
        if not event.retry:  # with retry, the run goes on: a RunStarted follows
            _end(sql, event, "interrupted")


def _count_tool(
    sql: Sql, event: ToolCallStarted | ToolCallCompleted, *, calls: int, errors: int
) -> None:
    sql.execute(
        "INSERT INTO run_stats_tools (conversation_id, tool_name, calls, errors) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (conversation_id, tool_name) DO UPDATE SET "
        "calls = run_stats_tools.calls + ?, errors = run_stats_tools.errors + ?",
        (str(event.originator_id), event.tool_name, calls, errors, calls, errors),
    )


def _end(sql: Sql, event: RunFailed | RunCancelled | RunInterrupted, outcome: Outcome) -> None:
    sql.execute(
        "UPDATE run_stats_runs SET outcome = ?, ended_at = ? WHERE run_id = ?",
        (outcome, to_micros(event.timestamp), event.run_id),
    )


# Reading.


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Median and maximum over the runs that reported it (None when none did)."""

    median: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> "Timing":
        if not values:
            return cls(median=None, max=None)
        return cls(median=statistics.median(values), max=max(values))


@dataclass(frozen=True, kw_only=True)
class ConversationStats:
    conversation_id: str
    owner: str
    messages: dict[str, int]
    runs: dict[str, int]
    """Runs by outcome, every outcome present."""
    runs_by_agent_version: dict[str, int]
    """Runs by the agent version they used: `<agent id>@<version>` (runs recorded before
    agents were versioned: `<agent name>@0`)."""
    retried_runs: int
    """Runs started again after an interruption (counted under their outcome too)."""
    input_tokens: int
    output_tokens: int
    tool_calls: int
    tool_errors: int
    tool_calls_by_name: dict[str, int]
    time_to_first_token_ms: Timing
    duration_ms: Timing
    cost_usd: float | None


def conversation_stats(sql: Sql, conversation_id: str) -> ConversationStats | None:
    """None when the read model has not seen the conversation start."""
    sql.execute("SELECT owner FROM run_stats_conversations WHERE id = ?", (conversation_id,))
    conversation = sql.fetchone()
    if conversation is None:
        return None
    sql.execute(
        "SELECT role, messages FROM run_stats_messages WHERE conversation_id = ? ORDER BY role",
        (conversation_id,),
    )
    messages = {row["role"]: int(row["messages"]) for row in sql.fetchall()}
    sql.execute(
        "SELECT tool_name, calls, errors FROM run_stats_tools "
        "WHERE conversation_id = ? ORDER BY tool_name",
        (conversation_id,),
    )
    tools = sql.fetchall()
    sql.execute(
        "SELECT outcome, attempts, input_tokens, output_tokens, cost_usd, duration_ms, "
        "time_to_first_token_ms, agent, agent_id, agent_version "
        "FROM run_stats_runs WHERE conversation_id = ?",
        (conversation_id,),
    )
    runs = sql.fetchall()
    return _conversation_stats(conversation_id, conversation["owner"], messages, tools, runs)


def empty_stats(conversation_id: str) -> ConversationStats:
    """The statistics of a conversation that has done nothing (yet)."""
    return _conversation_stats(conversation_id, "", {}, [], [])


def _conversation_stats(
    conversation_id: str,
    owner: str,
    messages: dict[str, int],
    tools: Sequence[Row],
    runs: Sequence[Row],
) -> ConversationStats:
    by_outcome = dict.fromkeys(OUTCOMES, 0)
    for run in runs:
        by_outcome[run["outcome"]] += 1
    by_version: dict[str, int] = {}
    for run in runs:
        key = f"{run['agent_id'] or run['agent']}@{int(run['agent_version'])}"
        by_version[key] = by_version.get(key, 0) + 1
    costs = [float(run["cost_usd"]) for run in runs if run["cost_usd"] is not None]
    completed = [run for run in runs if run["outcome"] == "completed"]
    return ConversationStats(
        conversation_id=conversation_id,
        owner=owner,
        messages=messages,
        runs=by_outcome,
        runs_by_agent_version=dict(sorted(by_version.items())),
        retried_runs=sum(1 for run in runs if run["attempts"] > 1),
        input_tokens=sum(int(run["input_tokens"]) for run in runs),
        output_tokens=sum(int(run["output_tokens"]) for run in runs),
        tool_calls=sum(int(tool["calls"]) for tool in tools),
        tool_errors=sum(int(tool["errors"]) for tool in tools),
        tool_calls_by_name={tool["tool_name"]: int(tool["calls"]) for tool in tools},
        time_to_first_token_ms=Timing.of(
            [
                float(run["time_to_first_token_ms"])
                for run in completed
                if run["time_to_first_token_ms"] is not None
            ]
        ),
        duration_ms=Timing.of(
            [float(run["duration_ms"]) for run in completed if run["duration_ms"] is not None]
        ),
        cost_usd=sum(costs) if costs else None,
    )


@dataclass(frozen=True, kw_only=True)
class UsageQuery:
    """Runs started in [start, end), of `owner`'s conversations (None: every owner's)."""

    owner: str | None
    start: datetime
    end: datetime
    group_by: GroupBy


@dataclass(frozen=True, kw_only=True)
class Usage:
    key: str
    runs: int
    conversations: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


_GROUP_KEYS: dict[str, str] = {
    "day": f"r.started_at / {_MICROS_PER_DAY}",  # whole days since the epoch, in UTC
    "agent": "r.agent",
    "user": "c.owner",
}


def usage(sql: Sql, query: UsageQuery) -> list[Usage]:
    """One row per group that has runs, ordered by key."""
    key = _GROUP_KEYS[query.group_by]
    where = ["r.started_at >= ?", "r.started_at < ?"]
    params: list[Any] = [to_micros(query.start), to_micros(query.end)]
    if query.owner is not None:
        where.append("c.owner = ?")
        params.append(query.owner)
    sql.execute(
        f"SELECT {key} AS grp, COUNT(*) AS runs, "  # noqa: S608 - keys are ours
        "COUNT(DISTINCT r.conversation_id) AS conversations, "
        "SUM(r.input_tokens) AS input_tokens, SUM(r.output_tokens) AS output_tokens, "
        "SUM(r.cost_usd) AS cost_usd "
        "FROM run_stats_runs r JOIN run_stats_conversations c ON c.id = r.conversation_id "
        f"WHERE {' AND '.join(where)} GROUP BY {key} ORDER BY grp",
        params,
    )
    return [
        Usage(
            key=_group_name(query.group_by, row["grp"]),
            runs=int(row["runs"]),
            conversations=int(row["conversations"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cost_usd=None if row["cost_usd"] is None else float(row["cost_usd"]),
        )
        for row in sql.fetchall()
    ]


def _group_name(group_by: str, value: Any) -> str:
    if group_by == "day":
        return (_EPOCH_DAY + timedelta(days=int(value))).isoformat()
    return str(value)


@dataclass(frozen=True, kw_only=True)
class AgentPopularity:
    agent: str
    conversations: int
    runs: int


def popular_agents(
    sql: Sql, *, owner: str | None, since: datetime, limit: int
) -> list[AgentPopularity]:
    """Agents by how many conversations had a run started since `since` (then by runs,
    then by name)."""
    where = ["r.started_at >= ?"]
    params: list[Any] = [to_micros(since)]
    if owner is not None:
        where.append("c.owner = ?")
        params.append(owner)
    params.append(limit)
    sql.execute(
        "SELECT r.agent AS agent, COUNT(DISTINCT r.conversation_id) AS conversations, "  # noqa: S608
        "COUNT(*) AS runs "
        "FROM run_stats_runs r JOIN run_stats_conversations c ON c.id = r.conversation_id "
        f"WHERE {' AND '.join(where)} GROUP BY r.agent "
        "ORDER BY conversations DESC, runs DESC, agent LIMIT ?",
        params,
    )
    return [
        AgentPopularity(
            agent=row["agent"], conversations=int(row["conversations"]), runs=int(row["runs"])
        )
        for row in sql.fetchall()
    ]


@dataclass(frozen=True, kw_only=True)
class RunRow:
    run_id: str
    conversation_id: str
    agent: str
    model: str
    started_at: datetime
    attempts: int
    outcome: str
    ended_at: datetime | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    duration_ms: float | None
    time_to_first_token_ms: float | None


@dataclass(frozen=True, kw_only=True)
class StatsRows:
    """Every row of the read model, in a stable order (for comparisons and audits)."""

    conversations: list[tuple[Any, ...]]
    runs: list[RunRow]
    messages: list[tuple[Any, ...]]
    tools: list[tuple[Any, ...]]


def all_stats(sql: Sql) -> StatsRows:
    def rows(query: str) -> list[tuple[Any, ...]]:
        sql.execute(query)
        return [tuple(row.values()) for row in map(dict, sql.fetchall())]

    return StatsRows(
        conversations=rows(
            "SELECT id, owner, agent, created_at FROM run_stats_conversations ORDER BY id"
        ),
        runs=all_runs(sql),
        messages=rows(
            "SELECT conversation_id, role, messages FROM run_stats_messages "
            "ORDER BY conversation_id, role"
        ),
        tools=rows(
            "SELECT conversation_id, tool_name, calls, errors FROM run_stats_tools "
            "ORDER BY conversation_id, tool_name"
        ),
    )


def all_runs(sql: Sql) -> list[RunRow]:
    """Every run in id order (for comparisons and audits)."""
    sql.execute(
        "SELECT run_id, conversation_id, agent, model, started_at, attempts, outcome, "
        "ended_at, input_tokens, output_tokens, cost_usd, duration_ms, time_to_first_token_ms "
        "FROM run_stats_runs ORDER BY run_id"
    )
    return [
        RunRow(
            **{
                **row,
                "started_at": from_micros(row["started_at"]),
                "ended_at": None if row["ended_at"] is None else from_micros(row["ended_at"]),
            }
        )
        for row in sql.fetchall()
    ]
