"""Conversations: create, read, post messages, and their event stream."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream

from threadlog.domain.agent import TRIAL_METADATA, AgentIsRetired
from threadlog.domain.application import Written
from threadlog.domain.conversation import Conversation, PostedMessage
from threadlog.domain.events import Cause
from threadlog.http.access import owned_conversation, owner_of
from threadlog.http.auth import USER, identity, requires
from threadlog.http.context import request_id_of
from threadlog.http.errors import BadRequest, UnknownAgent
from threadlog.http.schemas import (
    ConversationOut,
    CreateConversation,
    EventPage,
    MessageAccepted,
    PostMessage,
    RunResult,
    UpdateConversation,
)
from threadlog.infra import metrics, tracing
from threadlog.infra.runs import intake
from threadlog.infra.runs.executor import RunRequest
from threadlog.infra.runs.outcomes import run_outcome
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.envelope import EventEnvelope, served_envelopes
from threadlog.infra.store.eventstore import EventLog, StoredRow
from threadlog.infra.stream.feed import FeedEvent, Heartbeat, ends_run

STREAM_INTERRUPTED = (
    b'event: error\ndata: {"error":"unavailable","message":"the stream was interrupted; '
    b'reconnect with Last-Event-ID to resume"}\n\n'
)
log = structlog.get_logger(__name__)
MAX_POSITION = 2**63 - 1  # the store keeps positions as 64-bit integers


def conversation_out(
    conversation: Conversation, global_position: int | None = None
) -> ConversationOut:
    return ConversationOut(
        id=str(conversation.id),
        owner=conversation.owner,
        agent=conversation.agent,
        title=conversation.title,
        metadata=conversation.metadata,
        busy_policy=conversation.busy_policy,
        queued_messages=len(conversation.queue),
        archived=conversation.archived,
        created_at=conversation.created_on.isoformat(),
        updated_at=conversation.modified_on.isoformat(),
        position=conversation.version,
        message_count=conversation.message_count,
        active_run_id=conversation.active_run_id,
        global_position=global_position,
    )


def cause_of(request: Request[Any, Any, Any]) -> Cause:
    return Cause(
        actor=f"user:{identity(request).user_id}", correlation_id=request_id_of(request) or ""
    )


def parse_cursor(name: str, value: str | int | None) -> int | None:
    if value is None:
        return None
    try:
        position = int(value)
    except ValueError:
        raise BadRequest(
            f"{name} must be an event position (a whole number ≥ 0)", extra={"field": name}
        ) from None
    if not 0 <= position <= MAX_POSITION:
        raise BadRequest(f"{name} must be between 0 and {MAX_POSITION}", extra={"field": name})
    return position


def wants_json(request: Request[Any, Any, Any]) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def sse_frames(page: Sequence[FeedEvent], until_run: str | None) -> tuple[bytes, bool]:
    """The page's frames, up to the end of `until_run` if it ends in it, and whether it did."""
    if until_run is None:
        return joined_frames(page), False
    for index, item in enumerate(page):
        if ends_run(item, until_run):
            return joined_frames(page[: index + 1]), True
    return joined_frames(page), False


def joined_frames(page: Sequence[FeedEvent]) -> bytes:
    """Each event's SSE frame (`id: <position>`, `event: <type>`, `data: <payload>`),
    joined: each payload is copied once (into the page), not first into a frame of its
    own (a catch-up page holds 1,000 events)."""
    parts: list[bytes] = []
    add = parts.extend
    lines = _EVENT_LINES
    for item in page:
        line = lines.get(item.type) or _event_line(item.type)
        add((b"id: %d" % item.position, line, item.payload, b"\n\n"))
    return b"".join(parts)


# A frame's lines after its id, up to its data, by event type: kept for the few types
# there are (bounded all the same: the type of a live event comes in a NATS header).
_EVENT_LINES: dict[str, bytes] = {}
_EVENT_LINES_KEPT = 64


def _event_line(type_name: str) -> bytes:
    line = b"\nevent: %s\ndata: " % type_name.encode()
    if len(_EVENT_LINES) < _EVENT_LINES_KEPT:
        _EVENT_LINES[type_name] = line
    return line


def event_stream(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def result_of(
    runtime: Runtime, conversation_id: UUID, posted: PostedMessage
) -> Response[RunResult]:
    await runtime.runs.wait(
        conversation_id,
        posted.run_id,
        after=posted.position,
        seconds=runtime.settings.run_wait_seconds,
    )
    outcome = await asyncio.to_thread(
        run_outcome,
        runtime.event_log,
        runtime.content,
        conversation_id,
        posted.run_id,
        after=posted.position,
    )
    result = RunResult(
        conversation_id=str(conversation_id),
        run_id=posted.run_id,
        message_id=posted.message_id,
        status=outcome.status if outcome else "running",
        position=outcome.position if outcome else None,
        reply_message_id=outcome.reply_message_id if outcome else None,
        reply=outcome.reply if outcome else None,
        usage=outcome.usage if outcome else None,
        error=outcome.error if outcome else None,
        error_message=outcome.error_message if outcome else None,
    )
    return Response(result, status_code=200 if outcome else 202)


async def accept_message(
    runtime: Runtime,
    conversation_id: UUID,
    *,
    content: str,
    client_message_id: str | None,
    cause: Cause,
) -> Written[PostedMessage]:
    """Posts a user message under the busy policy and starts its run, in this process or
    a worker's (a queued message's run starts when the run before it ends)."""
    runtime.runs.check_available()
    with tracing.span("command.post_message", conversation_id=str(conversation_id)):
        return await _accept_message(
            runtime,
            conversation_id,
            content=content,
            client_message_id=client_message_id,
            cause=cause,
        )


async def _accept_message(
    runtime: Runtime,
    conversation_id: UUID,
    *,
    content: str,
    client_message_id: str | None,
    cause: Cause,
) -> Written[PostedMessage]:
    written = await intake.post_message(
        runtime.service,
        runtime.control,
        conversation_id,
        content=content,
        client_message_id=client_message_id,
        model=runtime.catalog.pin_of,
        cause=cause,
    )
    posted = written.value
    if not posted.duplicate and not posted.queued:
        await runtime.runs.dispatch(
            RunRequest(
                conversation_id=conversation_id,
                run_id=posted.run_id,
                message_id=posted.message_id,
                correlation_id=cause.correlation_id,
            )
        )
    return written


async def bindable_agent(runtime: Runtime, request: Request[Any, Any, Any], name: str) -> str:
    """What a new conversation records as its agent: a system agent's name or an agent's
    id, when the caller may see it (their own or a published one; admins: any) and it is
    not retired."""
    agent = await asyncio.to_thread(runtime.catalog.find, name)
    caller = identity(request)
    if agent is None or not (agent.public or agent.owner == caller.user_id or caller.has("admin")):
        raise UnknownAgent(
            f"unknown agent {name!r}; GET /v1/agents lists them", extra={"field": "agent"}
        )
    if agent.retired:
        raise AgentIsRetired(f"the agent {name!r} is retired; it takes no new conversations")
    return agent.name if agent.system else str(agent.id)


class ConversationController(Controller):
    path = "/v1/conversations"
    tags = ["conversations"]

    @post("/", status_code=201, summary="Start a conversation", guards=USER)
    async def create(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        data: JSONBody[CreateConversation],
    ) -> ConversationOut:
        if TRIAL_METADATA in data.metadata:
            raise BadRequest(
                f"metadata key {TRIAL_METADATA!r} is reserved for trials of agents",
                extra={"field": "metadata"},
            )
        agent = await bindable_agent(runtime, request, data.agent or runtime.settings.agent)
        with tracing.span("command.start_conversation"):
            written = await asyncio.to_thread(
                runtime.service.start_conversation,
                owner=owner_of(request),
                agent=agent,
                title=data.title or "New conversation",
                metadata=data.metadata,
                cause=cause_of(request),
                busy_policy=data.busy_policy,
            )
        return conversation_out(written.value, written.global_position)

    @get("/{conversation_id:uuid}", summary="A conversation's current state", guards=USER)
    async def read(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        conversation_id: FromPath[UUID],
    ) -> ConversationOut:
        return conversation_out(await owned_conversation(runtime, request, conversation_id))

    @patch("/{conversation_id:uuid}", summary="Rename or archive a conversation", guards=USER)
    async def update(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        conversation_id: FromPath[UUID],
        data: JSONBody[UpdateConversation],
    ) -> ConversationOut:
        service, cause = runtime.service, cause_of(request)
        if data.title is msgspec.UNSET and data.archived is msgspec.UNSET:
            raise BadRequest("give `title` and/or `archived`", extra={"field": "body"})
        await owned_conversation(runtime, request, conversation_id)
        written = None
        if data.title is not msgspec.UNSET:
            written = await asyncio.to_thread(
                service.rename, conversation_id, title=data.title, cause=cause
            )
        if data.archived is True:
            written = await asyncio.to_thread(service.archive, conversation_id, cause=cause)
        assert written is not None
        return conversation_out(written.value, written.global_position)

    @post(
        "/{conversation_id:uuid}/clear",
        status_code=200,
        summary="Restart the history and the agent's context (nothing is deleted)",
        guards=USER,
    )
    async def clear(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        conversation_id: FromPath[UUID],
    ) -> ConversationOut:
        await owned_conversation(runtime, request, conversation_id)
        written = await asyncio.to_thread(
            runtime.service.clear_history, conversation_id, cause=cause_of(request)
        )
        return conversation_out(written.value, written.global_position)

    @post(
        "/{conversation_id:uuid}/messages",
        status_code=202,
        summary="Post a user message; it starts an agent run",
        description=(
            "Three ways to run. By default answers 202 at once with the message and run ids "
            "(watch `/events`). With `?wait=true` answers 200 with the run's result when it "
            "ends (202 with status `running` after `THREADLOG_RUN_WAIT_SECONDS`). With "
            "`Accept: text/event-stream` streams this run's events and closes after its "
            "last one. `?background=true` answers the 202 at once with "
            "`Location: /v1/runs/{run_id}` (read the run there, or wait for its `/result`), "
            "whatever `wait` and `Accept` ask for."
        ),
        # Completed in http/contract.py: 200 is also text/event-stream, 202 also a RunResult.
        responses={200: ResponseSpec(data_container=RunResult, description="The run's result")},
        guards=USER,
    )
    async def post_message(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        conversation_id: FromPath[UUID],
        data: JSONBody[PostMessage],
        wait: Annotated[
            bool, QueryParameter(description="Answer with the run's result when it ends")
        ] = False,
        background: Annotated[
            bool, QueryParameter(description="Answer 202 at once, `Location` the run")
        ] = False,
    ) -> Response[Any]:
        await owned_conversation(runtime, request, conversation_id)
        # `background` wins over `wait` and an event-stream `Accept`: the 202 at once.
        streams = not background and "text/event-stream" in request.headers.get("accept", "")
        wait = wait and not background
        written = await accept_message(
            runtime,
            conversation_id,
            content=data.content,
            client_message_id=data.client_message_id,
            cause=cause_of(request),
        )
        posted = written.value
        if streams:
            return event_stream(
                self._sse(runtime, conversation_id, posted.position - 1, until_run=posted.run_id)
            )
        if wait:
            return await result_of(runtime, conversation_id, posted)
        accepted = MessageAccepted(
            conversation_id=str(conversation_id),
            message_id=posted.message_id,
            run_id=posted.run_id,
            position=posted.position,
            global_position=written.global_position,
            duplicate=posted.duplicate,
            queued=posted.queued,
            events_url=f"/v1/conversations/{conversation_id}/events?after={posted.position - 1}",
        )
        headers = {"Location": f"/v1/runs/{posted.run_id}"} if background else None
        return Response(accepted, status_code=202, headers=headers)

    @get(
        "/{conversation_id:uuid}/events",
        summary="The conversation's events: Server-Sent Events, or JSON pages",
        description=(
            "With `Accept: text/event-stream` (the default) streams every event after the "
            "cursor (`Last-Event-ID` or `after`), stored ones first, then live ones, each "
            "with `id:` = its position. With `Accept: application/json` answers one page "
            "`{items, next}`; pass `next` back as `after`."
        ),
        response_description="text/event-stream, or an EventPage as JSON",
        responses={200: ResponseSpec(data_container=EventPage, description="A page, or SSE")},
        # The owner, or an auditor (who may read every conversation's events).
        guards=[requires("user", "auditor")],
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        conversation_id: FromPath[UUID],
        after: Annotated[
            int | None, QueryParameter(ge=0, le=MAX_POSITION, description="Position to start after")
        ] = None,
        limit: Annotated[int | None, QueryParameter(ge=1, description="JSON page size")] = None,
        last_event_id: Annotated[
            int | None,
            HeaderParameter(
                name="Last-Event-ID", ge=0, le=MAX_POSITION, description="Resume after it"
            ),
        ] = None,
    ) -> Response[Any]:
        start = last_event_id if last_event_id is not None else after or 0
        event_log = runtime.event_log
        await owned_conversation(runtime, request, conversation_id, auditors=True)
        if wants_json(request):
            page_size = min(limit or runtime.settings.page_size, runtime.settings.max_page_size)
            logged, items = await asyncio.to_thread(
                _served_page, event_log, runtime.content, conversation_id, start, page_size
            )
            more = len(logged) > page_size
            return Response(EventPage(items=items, next=items[-1].position if more else None))
        return event_stream(self._sse(runtime, conversation_id, start))

    async def _sse(
        self, runtime: Runtime, conversation_id: UUID, after: int, until_run: str | None = None
    ) -> AsyncIterator[bytes]:
        async for frames in run_frames(runtime, conversation_id, after, until_run):
            yield frames


async def run_frames(
    runtime: Runtime, conversation_id: UUID, after: int, until_run: str | None = None
) -> AsyncIterator[bytes]:
    """SSE frames from `after` on; with `until_run`, closes after that run's last event."""
    yield b"retry: 1000\n\n"
    metrics.SSE_STREAMS.inc()
    try:
        async for page in runtime.feed.follow_pages(
            conversation_id,
            after=after,
            heartbeat_seconds=runtime.settings.sse_heartbeat_seconds,
        ):
            if isinstance(page, Heartbeat):
                yield b": heartbeat\n\n"
                continue
            # One chunk per page: one write instead of one per event.
            frames, ended = sse_frames(page, until_run)
            delivery = tracing.start_span("sse.deliver", events=len(page))
            yield frames
            if delivery is not None:
                delivery.end()
            if ended:
                return
    except Exception as error:
        # Headers are sent: the status cannot change. End with a final event that says
        # why; the client reconnects with Last-Event-ID and loses nothing.
        log.warning("sse.ended_by_error", error=repr(error), conversation_id=str(conversation_id))
        yield STREAM_INTERRUPTED
    finally:
        metrics.SSE_STREAMS.dec()


def _served_page(
    event_log: EventLog, keys: ContentKeys, conversation_id: UUID, after: int, size: int
) -> tuple[list[StoredRow], list[EventEnvelope]]:
    """A JSON page of events, content opened, the sealed values kept for re-hashing
    (built from the stored rows, no domain events: infra/store/envelope.py)."""
    rows = event_log.read_rows(conversation_id, after=after, limit=size + 1)
    return rows, served_envelopes(rows[:size], conversation_id, event_log.mapper, keys)
