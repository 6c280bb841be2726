"""AG-UI: `POST /v1/ag-ui` takes AG-UI's `RunAgentInput` and answers its run as AG-UI
events over Server-Sent Events, mapped from the thread's stored events
(http/agui_events.py) and read as the conversation stream reads them (stored, then
live). docs/ag-ui.md has the mapping, the snapshot window and how to resume.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
import structlog
from eventsourcing.persistence import IntegrityError
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream

from threadlog.domain.conversation import Conversation
from threadlog.domain.errors import ConversationNotFound
from threadlog.http.agui_events import (
    AguiRun,
    Cursor,
    Frame,
    events_between,
    messages_snapshot,
    run_at,
)
from threadlog.http.auth import USER, identity
from threadlog.http.conversations import accept_message, bindable_agent, cause_of
from threadlog.http.errors import PositionConflict
from threadlog.http.reads import opened_message, read_view
from threadlog.http.schemas import NOT_BLANK, AgentName
from threadlog.infra import metrics
from threadlog.infra.runtime import Runtime
from threadlog.infra.stream.feed import Heartbeat
from threadlog.projections.message_history import MessageHistory, read_messages

log = structlog.get_logger(__name__)

CURSOR_PATTERN = r"^[0-9]{1,18}(\.[0-9]{1,6})?$"
"""A position, or `<position>.<index>`: the SSE `id:` (and `metadata.threadlog.cursor`)
of an AG-UI event."""
DEFAULT_SNAPSHOT = 50
MAX_SNAPSHOT = 500
CLIENT_MESSAGE_PREFIX = "ag-ui:"
"""A user message's AG-UI id, stored as its `client_message_id` (posted once)."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(pattern=NOT_BLANK)]


# RunAgentInput (AG-UI 1.0), as this server reads it. Unknown fields are allowed, as the
# protocol's own models allow them.


class TextPart(msgspec.Struct, kw_only=True):
    type: Literal["text"]
    text: Text


class UserMessage(msgspec.Struct, tag_field="role", tag="user", rename="camel", kw_only=True):
    id: Id
    content: Text | Annotated[list[TextPart], msgspec.Meta(min_length=1)]
    name: str | None = None


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class AssistantMessage(
    msgspec.Struct, tag_field="role", tag="assistant", rename="camel", kw_only=True
):
    id: Id
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class SystemMessage(msgspec.Struct, tag_field="role", tag="system", rename="camel", kw_only=True):
    id: Id
    content: str
    name: str | None = None


class DeveloperMessage(
    msgspec.Struct, tag_field="role", tag="developer", rename="camel", kw_only=True
):
    id: Id
    content: str
    name: str | None = None


class ToolMessage(msgspec.Struct, tag_field="role", tag="tool", rename="camel", kw_only=True):
    id: Id
    content: str | list[TextPart]
    tool_call_id: str
    error: str | None = None


class ReasoningMessage(
    msgspec.Struct, tag_field="role", tag="reasoning", rename="camel", kw_only=True
):
    id: Id
    content: str


AguiMessage = (
    UserMessage
    | AssistantMessage
    | SystemMessage
    | DeveloperMessage
    | ToolMessage
    | ReasoningMessage
)


class AguiTool(msgspec.Struct, kw_only=True):
    name: str
    description: str
    parameters: Any = None


class AguiContext(msgspec.Struct, kw_only=True):
    description: str
    value: str


class RunAgentInput(msgspec.Struct, rename="camel", kw_only=True):
    """AG-UI's request to run an agent: `threadId` is a conversation id (a UUID);
    `messages` the thread as the client knows it, the new user message last."""

    thread_id: UUID
    run_id: Id
    messages: list[AguiMessage]
    protocol_version: str | None = None
    parent_run_id: str | None = None
    state: Any = None
    tools: list[AguiTool] | None = None
    context: list[AguiContext] | None = None
    forwarded_props: Any = None
    resume: list[Any] | None = None


class AgentMismatch(HTTPException):
    status_code = 409
    code = "agent_mismatch"


def _text(message: UserMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text for part in message.content)


async def _thread(
    runtime: Runtime, request: Request[Any, Any, Any], thread_id: UUID, agent: str | None
) -> Conversation:
    """The caller's conversation `thread_id`, started with `agent` when there is none;
    another user's is 404, like one that does not exist."""
    caller = identity(request).user_id
    service = runtime.service
    try:
        conversation = await asyncio.to_thread(service.get_conversation, thread_id)
    except ConversationNotFound:
        # A system agent's name or the id of an agent the caller may use (as POST
        # /v1/conversations binds it): 400 for one the caller cannot see, 409 retired.
        name = await bindable_agent(runtime, request, agent or runtime.settings.agent)
        try:
            written = await asyncio.to_thread(
                service.start_conversation,
                owner=caller,
                agent=name,
                title="AG-UI thread",
                metadata={},
                cause=cause_of(request),
                conversation_id=thread_id,
            )
            return written.value
        except IntegrityError:  # started meanwhile by another request
            conversation = await asyncio.to_thread(service.get_conversation, thread_id)
    if conversation.owner != caller:
        raise ConversationNotFound(thread_id)
    if agent is not None and agent != conversation.agent:
        raise AgentMismatch(
            f"thread {thread_id} is bound to agent {conversation.agent!r}, not {agent!r}",
            extra={"field": "agent"},
        )
    return conversation


async def _snapshot(
    runtime: Runtime,
    conversation_id: UUID,
    position: int,
    size: int,
    min_position: int | None,
) -> dict[str, Any]:
    """MESSAGES_SNAPSHOT of the newest `size` messages at or before `position` (the
    read model read once it holds every event up to there)."""
    if min_position is None and position > 0:
        stored = await asyncio.to_thread(
            runtime.event_log.read_rows,
            conversation_id,
            after=position - 1,
            up_to=position,
            limit=1,
        )
        min_position = stored[0].global_position if stored else None
    rows = await read_view(
        runtime,
        MessageHistory.name,
        min_position,
        lambda sql: [
            opened_message(message, runtime.content)
            for message in read_messages(
                sql,
                str(conversation_id),
                after=0,
                before=position + 1,
                limit=size + 1,
                newest_first=True,
            )
        ],
    )
    more = len(rows) > size
    window = list(reversed(rows[:size]))
    oldest = window[0].position if window else None
    return messages_snapshot(conversation_id, window, oldest=oldest, more=more)


@post(
    "/v1/ag-ui",
    status_code=200,
    summary="Run an agent with AG-UI: RunAgentInput in, AG-UI events out (SSE)",
    description=(
        "Takes AG-UI's `RunAgentInput`. `threadId` is a conversation (a UUID; an unknown "
        "one is started for the caller, bound to `agent`, default `THREADLOG_AGENT`). "
        "When the last message is a user message not posted before, it is posted and the "
        "stream follows its run; the same message again (same `id`) follows the same "
        "run, never a second one. Otherwise the stream follows the run active at the "
        "cursor. The answer is Server-Sent Events: RUN_STARTED, a MESSAGES_SNAPSHOT of "
        "the newest `snapshot` messages, the run's events mapped from the stored ones, "
        "then RUN_FINISHED or RUN_ERROR, and the stream ends. Each event's `id:` (and "
        "`metadata.threadlog.cursor`) is its cursor: send it back as `Last-Event-ID` (or "
        "`after`) to resume after it, nothing lost or repeated (docs/ag-ui.md)."
    ),
    response_description="text/event-stream of AG-UI events",
    tags=["ag-ui"],
    guards=USER,
)
async def run_agent(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    data: JSONBody[RunAgentInput],
    agent: Annotated[
        AgentName | None, QueryParameter(description="The agent of a new thread")
    ] = None,
    snapshot: Annotated[
        int | None,
        QueryParameter(
            ge=0,
            le=MAX_SNAPSHOT,
            description=(
                f"Messages in the MESSAGES_SNAPSHOT (default {DEFAULT_SNAPSHOT}; 0: none). "
                "A resumed stream has none unless asked"
            ),
        ),
    ] = None,
    after: Annotated[
        str | None,
        QueryParameter(pattern=CURSOR_PATTERN, description="Resume after this cursor"),
    ] = None,
    last_event_id: Annotated[
        str | None,
        HeaderParameter(
            name="Last-Event-ID", pattern=CURSOR_PATTERN, description="Resume after it"
        ),
    ] = None,
) -> Response[Any]:
    given = last_event_id if last_event_id is not None else after
    cursor = Cursor.parse(given) if given is not None else None
    thread_id = data.thread_id
    conversation = await _thread(runtime, request, thread_id, agent)
    if cursor is not None and cursor.position > conversation.version:
        raise PositionConflict(
            f"the cursor {cursor} is past the thread's last event ({conversation.version})",
            extra={"field": "Last-Event-ID" if last_event_id is not None else "after"},
        )
    last = data.messages[-1] if data.messages else None
    event_log, keys = runtime.event_log, runtime.content
    run_id: str | None
    first: int  # the position the followed run's events start at
    min_position = None
    ended = False
    resumed = cursor is not None
    if isinstance(last, UserMessage) and (
        CLIENT_MESSAGE_PREFIX + last.id not in conversation.client_messages
    ):
        written = await accept_message(
            runtime,
            thread_id,
            content=_text(last),
            client_message_id=CLIENT_MESSAGE_PREFIX + last.id,
            cause=cause_of(request),
        )
        run_id, first = written.value.run_id, written.value.position
        cursor, resumed, min_position = Cursor(first), False, written.global_position
    elif isinstance(last, UserMessage):
        _, run_id, first = conversation.client_messages[CLIENT_MESSAGE_PREFIX + last.id]
        cursor = cursor or Cursor(first)
    else:
        at = conversation.version if cursor is None else cursor.position
        if cursor is not None and cursor.index is not None:
            at -= 1  # the run whose event is being resumed
        found = await asyncio.to_thread(run_at, event_log, keys, thread_id, at)
        run_id, first, ended = found.run_id, found.first, found.ended
        if cursor is None:  # joining: the whole active run
            cursor = Cursor(at if ended else first)
    run = AguiRun(str(thread_id), data.run_id, run_id)
    upto = cursor.position if cursor.index is None else cursor.position - 1
    if ended:
        run.mark_ended()
    else:
        before = await asyncio.to_thread(
            events_between, event_log, keys, thread_id, first - 1, upto
        )
        run.rebuild(before)
    window = DEFAULT_SNAPSHOT if snapshot is None and not resumed else snapshot or 0
    snapshot_event = (
        await _snapshot(runtime, thread_id, upto, window, min_position) if window else None
    )
    frames = run.opening(cursor, snapshot_event)
    follow_after = upto
    if cursor.index is not None:
        resumed_event = await asyncio.to_thread(
            events_between, event_log, keys, thread_id, upto, cursor.position
        )
        for item in resumed_event:
            frames += run.frames(item, skip=cursor.index)
        follow_after = cursor.position
    return Stream(
        _stream(runtime, thread_id, run, frames, follow_after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    runtime: Runtime, thread_id: UUID, run: AguiRun, opening: list[Frame], after: int
) -> AsyncIterator[bytes]:
    yield b"".join(frame.sse() for frame in opening)
    if run.ended:
        return
    last = opening[-1].cursor
    metrics.SSE_STREAMS.inc()
    try:
        async for page in runtime.feed.follow_pages(
            thread_id, after=after, heartbeat_seconds=runtime.settings.sse_heartbeat_seconds
        ):
            if isinstance(page, Heartbeat):
                yield b": heartbeat\n\n"
                continue
            chunk = []
            for item in page:
                for frame in run.frames(item):
                    chunk.append(frame.sse())
                    last = frame.cursor
                if run.ended:
                    break
            if chunk:
                yield b"".join(chunk)
            if run.ended:
                return
    except Exception as error:
        # Headers are sent: end with RUN_ERROR saying how to resume (the run goes on).
        log.warning("ag_ui.ended_by_error", error=repr(error), thread_id=str(thread_id))
        stopped = {
            "type": "RUN_ERROR",
            "message": (
                f"the stream was interrupted; the run goes on: resume with Last-Event-ID: {last}"
            ),
            "code": "stream_interrupted",
            "metadata": {"threadlog": {"position": Cursor.parse(last).position, "cursor": last}},
        }
        yield Frame(last, stopped).sse()
    finally:
        metrics.SSE_STREAMS.dec()
