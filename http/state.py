"""A conversation as it stood at a position: replayed from its events (owner or auditor)."""

import asyncio
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from threadlog.http.access import owned_conversation
from threadlog.http.auth import requires
from threadlog.http.conversations import MAX_POSITION
from threadlog.http.errors import PositionConflict
from threadlog.http.reads import reject_unknown_parameters
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.content import ContentKeys, opened_event
from threadlog.infra.store.eventstore import EventLog
from threadlog.projections.conversation_state import (
    ActiveRun,
    ConversationState,
    StateFold,
    StateMessage,
    ToolCallSummary,
)

REPLAY_PAGE = 1000


class ToolCallSummaryOut(msgspec.Struct, frozen=True, kw_only=True):
    tool_call_id: str
    name: str
    status: str
    error: str | None


class StateMessageOut(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    run_id: str
    role: str
    # null: erased with its owner's content keys (docs/erasure.md).
    content: str | None
    position: int
    tool_calls: list[ToolCallSummaryOut] | None


class ActiveRunOut(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    message_id: str
    partial_text: str
    tool_calls: list[ToolCallSummaryOut]


class ConversationStateOut(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    position: int
    last_position: int
    timestamp: str
    owner: str
    agent: str
    title: str
    archived: bool
    messages: list[StateMessageOut]
    active_run: ActiveRunOut | None
    queued_message_ids: list[str]
    last_hash: str


def _calls(calls: tuple[ToolCallSummary, ...]) -> list[ToolCallSummaryOut]:
    return [
        ToolCallSummaryOut(
            tool_call_id=c.tool_call_id, name=c.tool_name, status=c.status, error=c.error
        )
        for c in calls
    ]


def _message(message: StateMessage) -> StateMessageOut:
    return StateMessageOut(
        message_id=message.message_id,
        run_id=message.run_id,
        role=message.role,
        content=message.content,
        position=message.position,
        tool_calls=None if message.tool_calls is None else _calls(message.tool_calls),
    )


def _run(run: ActiveRun | None) -> ActiveRunOut | None:
    if run is None:
        return None
    return ActiveRunOut(
        run_id=run.run_id,
        message_id=run.message_id,
        partial_text=run.partial_text,
        tool_calls=_calls(run.tool_calls),
    )


def state_out(state: ConversationState, last_position: int) -> ConversationStateOut:
    return ConversationStateOut(
        conversation_id=state.conversation_id,
        position=state.position,
        last_position=last_position,
        timestamp=state.timestamp,
        owner=state.owner,
        agent=state.agent,
        title=state.title,
        archived=state.archived,
        messages=[_message(m) for m in state.messages],
        active_run=_run(state.active_run),
        queued_message_ids=list(state.queued_message_ids),
        last_hash=state.last_hash,
    )


def replay(
    event_log: EventLog, keys: ContentKeys, conversation_id: UUID, up_to: int
) -> ConversationState:
    """Folds the conversation's events 1…`up_to`, a page at a time, content opened."""
    fold = StateFold()
    after = 0
    while after < up_to:
        page = event_log.read(conversation_id, after=after, up_to=up_to, limit=REPLAY_PAGE)
        if not page:
            break
        for logged in page:
            fold.apply(opened_event(keys, logged.event))
        after = page[-1].event.originator_version
    return fold.state()


@get(
    "/v1/conversations/{conversation_id:uuid}/state",
    summary="The conversation as it stood at a position",
    description=(
        "Replays the conversation's events up to position `at` (default: its last): "
        "title, archived, the messages so far (tool calls in brief), the run active at "
        "that moment with the text it had streamed, queued messages and the chain's "
        "last hash. `at` beyond the last position is 409 (`position_not_reached`)."
    ),
    tags=["conversations"],
    # The owner, or an auditor (who may read every conversation's events).
    guards=[requires("user", "auditor")],
)
async def conversation_state(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    conversation_id: FromPath[UUID],
    at: Annotated[
        int | None, QueryParameter(ge=1, le=MAX_POSITION, description="A position (default: last)")
    ] = None,
) -> ConversationStateOut:
    reject_unknown_parameters(request, frozenset({"at"}))
    conversation = await owned_conversation(runtime, request, conversation_id, auditors=True)
    last = conversation.version
    if at is not None and at > last:
        raise PositionConflict(
            f"at={at} is past the conversation's last position, {last}",
            extra={"field": "at", "last_position": last},
        )
    state = await asyncio.to_thread(
        replay, runtime.event_log, runtime.content, conversation_id, at or last
    )
    return state_out(state, last)
