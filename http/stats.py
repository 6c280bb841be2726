"""Statistics from the `run_stats` read model: one conversation's, usage over time,
and the most used agents. Each takes `min_position` like the other reads."""

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, TypeVar
from uuid import UUID

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from threadlog.domain.errors import ConversationNotFound
from threadlog.http.access import owned_conversation
from threadlog.http.auth import identity, requires
from threadlog.http.params import DATE_OR_DATE_TIME_SCHEMA, parse_instant
from threadlog.http.reads import MinPosition, read_view, reject_unknown_parameters
from threadlog.infra.runtime import Runtime
from threadlog.projections.run_stats import (
    AgentPopularity,
    ConversationStats,
    GroupBy,
    RunStats,
    Timing,
    Usage,
    UsageQuery,
    conversation_stats,
    empty_stats,
    popular_agents,
    usage,
)
from threadlog.projections.views import Sql

DEFAULT_USAGE_DAYS = 30
DEFAULT_POPULAR_DAYS = 30
MAX_POPULAR_DAYS = 365
DEFAULT_POPULAR_LIMIT = 10
MAX_POPULAR_LIMIT = 100

T = TypeVar("T")


class TimingOut(msgspec.Struct, frozen=True, kw_only=True):
    median: float | None
    max: float | None


class RunCountsOut(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    running: int
    completed: int
    failed: int
    cancelled: int
    interrupted: int
    retried: int
    """Runs started again after an interruption (counted under their outcome too)."""


class TokensOut(msgspec.Struct, frozen=True, kw_only=True):
    input: int
    output: int


class ToolCallsOut(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    errors: int
    by_name: dict[str, int]


class ConversationStatsOut(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    messages: dict[str, int]
    runs: RunCountsOut
    # Runs by the agent version they used: `<agent id>@<version>`.
    runs_by_agent_version: dict[str, int]
    tokens: TokensOut
    tool_calls: ToolCallsOut
    time_to_first_token_ms: TimingOut
    duration_ms: TimingOut
    cost_usd: float | None


class UsageGroupOut(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    runs: int
    conversations: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


class UsageOut(msgspec.Struct, frozen=True, kw_only=True, rename={"start": "from", "end": "to"}):
    start: str
    end: str
    group_by: str
    groups: list[UsageGroupOut]


class PopularAgentOut(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    conversations: int
    runs: int


class PopularAgentsOut(msgspec.Struct, frozen=True, kw_only=True):
    days: int
    ranked_by: str
    items: list[PopularAgentOut]


def _timing(timing: Timing) -> TimingOut:
    return TimingOut(median=timing.median, max=timing.max)


def stats_out(conversation_id: UUID, stats: ConversationStats | None) -> ConversationStatsOut:
    """The statistics; all zero when the read model has not yet seen the conversation."""
    if stats is None:
        return stats_out(conversation_id, empty_stats(str(conversation_id)))
    runs = stats.runs
    return ConversationStatsOut(
        conversation_id=str(conversation_id),
        messages=stats.messages,
        runs=RunCountsOut(
            total=sum(runs.values()),
            running=runs["running"],
            completed=runs["completed"],
            failed=runs["failed"],
            cancelled=runs["cancelled"],
            interrupted=runs["interrupted"],
            retried=stats.retried_runs,
        ),
        runs_by_agent_version=stats.runs_by_agent_version,
        tokens=TokensOut(input=stats.input_tokens, output=stats.output_tokens),
        tool_calls=ToolCallsOut(
            count=stats.tool_calls, errors=stats.tool_errors, by_name=stats.tool_calls_by_name
        ),
        time_to_first_token_ms=_timing(stats.time_to_first_token_ms),
        duration_ms=_timing(stats.duration_ms),
        cost_usd=stats.cost_usd,
    )


def usage_window(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[from, to): by default the last DEFAULT_USAGE_DAYS whole days, today included.
    A window whose `from` is after its `to` is empty."""
    tomorrow = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), UTC)
    until = parse_instant("to", end, dates=True) if end is not None else tomorrow
    since = (
        parse_instant("from", start, dates=True)
        if start is not None
        else until - timedelta(days=DEFAULT_USAGE_DAYS)
    )
    return since, until


def usage_group_out(group: Usage) -> UsageGroupOut:
    return UsageGroupOut(
        key=group.key,
        runs=group.runs,
        conversations=group.conversations,
        input_tokens=group.input_tokens,
        output_tokens=group.output_tokens,
        cost_usd=group.cost_usd,
    )


def popular_out(agent: AgentPopularity) -> PopularAgentOut:
    return PopularAgentOut(agent=agent.agent, conversations=agent.conversations, runs=agent.runs)


def scope_of(request: Request[Any, Any, Any]) -> str | None:
    """Whose usage a caller sees: analysts and admins everyone's (None), users their own."""
    caller = identity(request)
    return None if caller.has("analyst") or caller.has("admin") else caller.user_id


_OWNER = {"owner": Provide(scope_of, sync_to_thread=False)}
_READERS = [requires("user", "analyst", "admin")]


@get(
    "/v1/conversations/{conversation_id:uuid}/stats",
    summary="A conversation's messages, runs, tokens, tool calls, timings and cost",
    tags=["stats"],
    dependencies=_OWNER,
    guards=[requires("user", "analyst")],
)
async def conversation_stats_of(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    owner: NamedDependency[str | None],
    conversation_id: FromPath[UUID],
    min_position: MinPosition = None,
) -> ConversationStatsOut:
    reject_unknown_parameters(request, frozenset({"min_position"}))
    if owner is not None:
        await owned_conversation(runtime, request, conversation_id)
    elif not await asyncio.to_thread(runtime.event_log.exists, conversation_id):
        raise ConversationNotFound(conversation_id)

    def read(sql: Sql) -> ConversationStats | None:
        return conversation_stats(sql, str(conversation_id))

    stats = await read_view(runtime, RunStats.name, min_position, read)
    return stats_out(conversation_id, stats)


@get(
    "/v1/stats/usage",
    summary="Tokens, runs, conversations and cost per day, agent or user",
    description="Runs started in [from, to) of the caller's conversations (every user's "
    "for analysts and admins), one group per "
    "day (UTC), agent or user that has any. `from` and `to` are RFC 3339 dates or "
    "date-times; by default the last 30 days, today included. A `from` after `to` is an "
    "empty window.",
    tags=["stats"],
    dependencies=_OWNER,
    guards=_READERS,
)
async def usage_report(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    owner: NamedDependency[str | None],
    start: Annotated[
        str | None,
        QueryParameter(
            name="from", description="Start (included)", schema_extra=DATE_OR_DATE_TIME_SCHEMA
        ),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            name="to", description="End (excluded)", schema_extra=DATE_OR_DATE_TIME_SCHEMA
        ),
    ] = None,
    group_by: Annotated[GroupBy, QueryParameter(description="One group per")] = "day",
    min_position: MinPosition = None,
) -> UsageOut:
    reject_unknown_parameters(request, frozenset({"from", "to", "group_by", "min_position"}))
    since, until = usage_window(start, end, datetime.now(UTC))
    query = UsageQuery(owner=owner, start=since, end=until, group_by=group_by)

    def read(sql: Sql) -> list[Usage]:
        return usage(sql, query)

    groups = await read_view(runtime, RunStats.name, min_position, read)
    return UsageOut(
        start=since.isoformat(),
        end=until.isoformat(),
        group_by=query.group_by,
        groups=[usage_group_out(group) for group in groups],
    )


@get(
    "/v1/agents/popular",
    summary="Agents ranked by how many conversations had a run in the last days",
    description="Ranked by conversations with at least one run started in the last `days` "
    "days, then by runs, then by name.",
    tags=["stats"],
    dependencies=_OWNER,
    guards=_READERS,
)
async def popular_agents_ranking(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    owner: NamedDependency[str | None],
    days: Annotated[
        int, QueryParameter(ge=1, le=MAX_POPULAR_DAYS, description="Look back this many days")
    ] = DEFAULT_POPULAR_DAYS,
    limit: Annotated[
        int, QueryParameter(ge=1, le=MAX_POPULAR_LIMIT, description="At most this many agents")
    ] = DEFAULT_POPULAR_LIMIT,
    min_position: MinPosition = None,
) -> PopularAgentsOut:
    reject_unknown_parameters(request, frozenset({"days", "limit", "min_position"}))
    since = datetime.now(UTC) - timedelta(days=days)

    def read(sql: Sql) -> list[AgentPopularity]:
        return popular_agents(sql, owner=owner, since=since, limit=limit)

    agents = await read_view(runtime, RunStats.name, min_position, read)
    return PopularAgentsOut(
        days=days, ranked_by="conversations", items=[popular_out(agent) for agent in agents]
    )


STATS_HANDLERS = [conversation_stats_of, usage_report, popular_agents_ranking]
"""Plain handlers (see READ_HANDLERS): register them after `ConversationController`."""
