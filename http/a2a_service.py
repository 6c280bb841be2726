"""A2A operations on threadlog: agent cards, and messages, tasks and their streams.

A context is a conversation, a task is a run. Sending a message posts it to the
conversation (a new one for the caller when the message has no `contextId`) with the
A2A `messageId` as its `client_message_id`, so a message sent twice is posted once.
Every task view and stream is folded from the stored events (http/a2a_mapping.py)
through the same catch-up-then-live feed as the SSE routes (infra/stream/feed.py).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException

from threadlog.domain.errors import (
    ConversationNotFound,
    DomainError,
    RunAlreadyEnded,
    RunNotFound,
)
from threadlog.domain.events import MessagePosted
from threadlog.http.a2a_mapping import LoggedItem, TaskFold, logged_item
from threadlog.http.a2a_protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PROTOCOL_VERSION,
    TASK_NOT_CANCELABLE,
    TASK_NOT_FOUND,
    UNSUPPORTED_OPERATION,
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    ApiKeyScheme,
    HttpAuthScheme,
    InMessage,
    RpcError,
    SchemeScopes,
    SecurityRequirement,
    SecurityScheme,
    SendMessageParams,
    StreamResponse,
    Task,
)
from threadlog.http.access import owner_of
from threadlog.http.conversations import accept_message, cause_of
from threadlog.http.errors import DOMAIN_STATUS, UNAVAILABLE
from threadlog.http.runs import cancel_run, find_run
from threadlog.infra.agents.registry import RegisteredAgent
from threadlog.infra.agents.tools import BUILTIN_TOOLS
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.envelope import served, stored_envelopes
from threadlog.infra.store.eventstore import topics_of
from threadlog.infra.stream.feed import Heartbeat

RequestAny = Request[Any, Any, Any]
CATCH_UP_PAGE = 1000
CANCEL_WAIT_SECONDS = 5.0
"""How long `CancelTask` waits for the run's `RunCancelled` before answering."""

# --- agent cards ---------------------------------------------------------------------------


def endpoint_path(agent: str) -> str:
    return f"/a2a/{agent}"


def agent_card(
    registered: RegisteredAgent, base_url: str, version: str, reference: str
) -> AgentCard:
    """The card of one agent: its description and tools as skills, its JSON-RPC endpoint,
    streaming, and the two ways threadlog authenticates."""
    spec = registered.spec
    description = spec.description or f"The threadlog agent {spec.name!r}."
    skills = [
        AgentSkill(
            id=spec.name,
            name=spec.name,
            description=description,
            tags=["threadlog", "conversation", spec.output_type],
        )
    ]
    for tool in spec.tools:
        known = BUILTIN_TOOLS.get(tool)
        skills.append(
            AgentSkill(
                id=f"{spec.name}.{tool}",
                name=tool,
                description=(known.description if known else None) or f"The tool {tool}.",
                tags=["tool"],
            )
        )
    output_modes = ["application/json", "text/plain"] if spec.output_schema else ["text/plain"]
    return AgentCard(
        name=spec.name,
        description=description,
        version=version,
        supported_interfaces=[
            AgentInterface(
                url=base_url + endpoint_path(reference),
                protocol_binding="JSONRPC",
                protocol_version=PROTOCOL_VERSION,
            )
        ],
        capabilities=AgentCapabilities(streaming=True),
        security_schemes={
            "bearer": SecurityScheme(
                http_auth_security_scheme=HttpAuthScheme(
                    scheme="Bearer",
                    bearer_format="JWT",
                    description="A threadlog JWT (POST /v1/users/login)",
                )
            ),
            "apiKey": SecurityScheme(
                api_key_security_scheme=ApiKeyScheme(
                    location="header", name="X-API-Key", description="A threadlog API key"
                )
            ),
        },
        security_requirements=[
            SecurityRequirement(schemes={"bearer": SchemeScopes()}),
            SecurityRequirement(schemes={"apiKey": SchemeScopes()}),
        ],
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=output_modes,
        skills=skills,
        provider=AgentProvider(organization="threadlog", url=base_url),
        documentation_url=base_url + "/schema",
    )


# --- errors --------------------------------------------------------------------------------


def rpc_error_of(error: Exception) -> RpcError | None:
    """threadlog's errors as JSON-RPC errors (None: not one threadlog knows)."""
    if isinstance(error, RpcError):
        return error
    if isinstance(error, RunNotFound | ConversationNotFound):
        return RpcError(TASK_NOT_FOUND, str(error))
    if isinstance(error, RunAlreadyEnded):
        return RpcError(TASK_NOT_CANCELABLE, str(error))
    if isinstance(error, DomainError):
        status = DOMAIN_STATUS.get(type(error), 400)
        code = INVALID_REQUEST if status == 409 else INVALID_PARAMS
        return RpcError(code, str(error), {"error": error.code})
    if isinstance(error, HTTPException) and error.status_code < 500:
        return RpcError(INVALID_REQUEST, str(error.detail), {"status": error.status_code})
    if isinstance(error, UNAVAILABLE):
        return RpcError(
            INTERNAL_ERROR,
            "a dependency (event store or NATS) is unavailable; retry shortly",
            {"error": "unavailable", "retry_after": 1},
        )
    return None


def _not_found(what: str, ident: str) -> RpcError:
    return RpcError(TASK_NOT_FOUND, f"{what} {ident} does not exist")


# --- reading a task from the log -----------------------------------------------------------


def _read_items(runtime: Runtime, conversation_id: UUID, after: int) -> list[LoggedItem]:
    rows = runtime.event_log.read_rows(conversation_id, after=after, limit=CATCH_UP_PAGE)
    envelopes = stored_envelopes(rows, conversation_id, runtime.event_log.mapper)
    return [
        LoggedItem(item.type, item.position, item.timestamp, item.data)
        for item in (served(envelope, runtime.content) for envelope in envelopes)
    ]


async def catch_up(runtime: Runtime, conversation_id: UUID, fold: TaskFold, after: int) -> int:
    """Applies the stored events after `after` (until the task ends), discarding the
    stream items; the position reached."""
    last = after
    while not fold.ended:
        items = await asyncio.to_thread(_read_items, runtime, conversation_id, last)
        for item in items:
            fold.apply(item)
            last = item.position
            if fold.ended:
                break
        if len(items) < CATCH_UP_PAGE:
            break
    return last


def _posted_position(runtime: Runtime, conversation_id: UUID, run_id: str) -> int | None:
    for logged in runtime.event_log.read(conversation_id, topics=topics_of(MessagePosted)):
        if getattr(logged.event, "run_id", None) == run_id:
            return int(logged.event.originator_version)
    return None


@dataclass(frozen=True)
class OwnedTask:
    run_id: str
    conversation_id: UUID
    posted_at: int
    """The position of the run's MessagePosted."""


async def owned_task(runtime: Runtime, request: RequestAny, task_id: str) -> OwnedTask:
    """The caller's task; TASK_NOT_FOUND for any other (another user's is unknown too)."""
    if not task_id or len(task_id) > 64:
        raise _not_found("task", repr(task_id))
    try:
        run = await find_run(runtime, task_id, owner_of(request), None)
    except RunNotFound:
        raise _not_found("task", task_id) from None
    conversation_id = UUID(run.conversation_id)
    posted = await asyncio.to_thread(_posted_position, runtime, conversation_id, task_id)
    if posted is None:
        raise _not_found("task", task_id)
    return OwnedTask(task_id, conversation_id, posted)


async def task_view(
    runtime: Runtime, task: OwnedTask, history_length: int | None, wait_seconds: float = 0.0
) -> Task:
    """The task as stored now; with `wait_seconds`, once it ended or that time passed."""
    fold = TaskFold(task.run_id, str(task.conversation_id))
    after = await catch_up(runtime, task.conversation_id, fold, task.posted_at - 1)
    if wait_seconds > 0 and not fold.ended:
        await _follow_until_ended(runtime, task.conversation_id, fold, after, wait_seconds)
    return fold.task(history_length)


async def _follow_until_ended(
    runtime: Runtime, conversation_id: UUID, fold: TaskFold, after: int, seconds: float
) -> None:
    updates = _updates(runtime, conversation_id, fold, after)
    try:
        async with asyncio.timeout(seconds), contextlib.aclosing(updates):
            async for _ in updates:
                if fold.ended:
                    return
    except TimeoutError:
        return


# --- streams -------------------------------------------------------------------------------


async def _updates(
    runtime: Runtime, conversation_id: UUID, fold: TaskFold, after: int
) -> AsyncGenerator[tuple[int, StreamResponse] | Heartbeat, None]:
    """The task's updates from the events after `after` (stored, then live) until it ends."""
    if fold.ended:
        return
    pages = runtime.feed.follow_pages(
        conversation_id, after=after, heartbeat_seconds=runtime.settings.sse_heartbeat_seconds
    )
    try:
        async for page in pages:
            if isinstance(page, Heartbeat):
                yield page
                continue
            for event in page:
                for update in fold.apply(logged_item(event.payload)):
                    yield event.position, update
                if fold.ended:
                    return
    finally:
        await pages.aclose()


async def task_stream(
    runtime: Runtime, task: OwnedTask, cursor: int | None
) -> AsyncGenerator[tuple[int, StreamResponse] | Heartbeat, None]:
    """Without a cursor: the task as stored now, then its updates. With one (a position a
    stream item carried): the updates after it, nothing before it again."""
    fold = TaskFold(task.run_id, str(task.conversation_id))
    start = task.posted_at - 1
    if cursor is None:
        after = await catch_up(runtime, task.conversation_id, fold, start)
        yield after, StreamResponse(task=fold.task())
    else:
        # Rebuilds the task up to the cursor silently, then goes on after it (a cursor
        # before the task: every update of it).
        after = await _catch_up_to(runtime, task.conversation_id, fold, start, max(cursor, start))
    updates = _updates(runtime, task.conversation_id, fold, after)
    async with contextlib.aclosing(updates):
        async for update in updates:
            yield update


async def _catch_up_to(
    runtime: Runtime, conversation_id: UUID, fold: TaskFold, after: int, up_to: int
) -> int:
    last = after
    while last < up_to and not fold.ended:
        items = await asyncio.to_thread(_read_items, runtime, conversation_id, last)
        for item in items:
            if item.position > up_to:
                return last
            fold.apply(item)
            last = item.position
        if len(items) < CATCH_UP_PAGE:
            break
    if last < up_to and not await asyncio.to_thread(_stored_at, runtime, conversation_id, up_to):
        # Every position a stream carried is stored: this one was never sent.
        raise RpcError(INVALID_PARAMS, f"Last-Event-ID {up_to} is past the conversation's end")
    return max(last, up_to)


def _stored_at(runtime: Runtime, conversation_id: UUID, position: int) -> bool:
    return bool(
        runtime.event_log.read_rows(conversation_id, after=position - 1, up_to=position, limit=1)
    )


# --- operations ----------------------------------------------------------------------------


def _content(message: InMessage) -> str:
    if message.role not in ("ROLE_USER", "ROLE_UNSPECIFIED", "user"):
        raise RpcError(INVALID_PARAMS, "the message's role must be ROLE_USER")
    texts = []
    for part in message.parts:
        if part.text is not None:
            texts.append(part.text)
        elif part.data is not None:
            texts.append(msgspec.json.encode(part.data).decode())
        else:
            raise RpcError(INVALID_PARAMS, "this agent takes text and data parts only (no files)")
    content = "\n".join(texts)
    if not content.strip():
        raise RpcError(INVALID_PARAMS, "the message has no text")
    return content


async def _context(
    runtime: Runtime, request: RequestAny, agent: str, context_id: str | None
) -> UUID:
    """The conversation of `context_id` (the caller's), or a new one when it is absent."""
    owner = owner_of(request)
    if context_id is None:
        written = await asyncio.to_thread(
            runtime.service.start_conversation,
            owner=owner,
            agent=agent,
            title="A2A conversation",
            metadata={"a2a": True},
            cause=cause_of(request),
        )
        return UUID(str(written.value.id))
    try:
        conversation_id = UUID(context_id)
        conversation = await asyncio.to_thread(runtime.service.get_conversation, conversation_id)
    except (ValueError, ConversationNotFound):
        raise _not_found("context", context_id) from None
    if conversation.owner != owner:
        raise _not_found("context", context_id)  # as unknown as one that never was
    if conversation.agent != agent:
        raise RpcError(
            INVALID_PARAMS,
            f"context {context_id} talks to the agent {conversation.agent!r}: send to "
            f"{endpoint_path(conversation.agent)}",
        )
    return conversation_id


async def send(
    runtime: Runtime, request: RequestAny, agent: str, params: SendMessageParams
) -> OwnedTask:
    """Posts the message (its run starts, or queues); the task it made."""
    message = params.message
    if len(message.message_id) > 200 or not message.message_id:
        raise RpcError(INVALID_PARAMS, "messageId must have 1 to 200 characters")
    content = _content(message)
    if message.task_id:
        await owned_task(runtime, request, message.task_id)
        raise RpcError(
            UNSUPPORTED_OPERATION,
            f"task {message.task_id} takes no further input: send the message without "
            "taskId (with the same contextId) to start a new task in the conversation",
        )
    conversation_id = await _context(runtime, request, agent, message.context_id)
    written = await accept_message(
        runtime,
        conversation_id,
        content=content,
        client_message_id=message.message_id,
        cause=cause_of(request),
    )
    posted = written.value
    return OwnedTask(posted.run_id, conversation_id, posted.position)


async def cancel(runtime: Runtime, request: RequestAny, task: OwnedTask) -> Task:
    try:
        await cancel_run(runtime, task.run_id, owner_of(request), cause_of(request))
    except RunAlreadyEnded as error:
        raise RpcError(TASK_NOT_CANCELABLE, str(error)) from None
    except HTTPException as error:
        raise RpcError(TASK_NOT_CANCELABLE, str(error.detail)) from None
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    return await task_view(runtime, task, None, max(deadline - time.monotonic(), 0.0))
