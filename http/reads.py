"""Reads from the read models: conversation lists and message histories.

Both take `min_position` (a global position, as writes return it): the answer then
reflects at least every event up to it. The read model is waited for up to
`THREADLOG_READ_WAIT_SECONDS`; past that the answer is 503 with `Retry-After`
rather than a stale page that silently breaks read-your-writes.
"""

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from threadlog.http.access import owned_conversation, owner_of
from threadlog.http.auth import USER
from threadlog.http.conversations import MAX_POSITION
from threadlog.http.errors import BadRequest
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.content import ContentKeys
from threadlog.projections.conversation_list import (
    ConversationList,
    ConversationSummary,
    ListQuery,
    RunStatus,
    list_conversations,
)
from threadlog.projections.message_history import Message, MessageHistory, read_messages
from threadlog.projections.views import Sql, to_micros

T = TypeVar("T")

MinPosition = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_POSITION,
        description="A global position (a write's `global_position`) the answer must reflect",
    ),
]
Limit = Annotated[int | None, QueryParameter(ge=1, description="Page size")]


class ConversationSummaryOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    owner: str
    agent: str
    title: str
    created_at: str
    last_activity_at: str
    message_count: int
    run_status: str
    position: int


class ConversationListPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ConversationSummaryOut]
    next: str | None


class ToolCallOut(msgspec.Struct, frozen=True, kw_only=True):
    tool_call_id: str
    name: str
    args: Any
    result: Any
    error: str | None


class CompactionOut(msgspec.Struct, frozen=True, kw_only=True):
    """Where the model's view of the conversation was compacted (HistoryCompacted)."""

    # The turns (user message and reply) whose user message is at or before it are
    # replaced, for the model, by this item's content: the summary.
    up_to_position: int
    tokens_before: int
    tokens_after: int
    # The model that wrote the summary, and what counted the tokens (`estimate` or
    # `tiktoken:<encoding>`).
    model: str
    tokenizer: str


class MessageOut(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    run_id: str
    # `user`, `assistant`, or `compaction`: the history was compacted here; the messages
    # before it are all still listed.
    role: str
    # null when erased: its owner's content keys were destroyed (docs/erasure.md).
    content: str | None
    position: int
    created_at: str
    # Assistant messages: the run's tool calls in order, and its structured output.
    tool_calls: list[ToolCallOut] | None = None
    output: Any = None
    # The content (and the tool calls' arguments, results and output) was erased.
    erased: bool = False
    # Role `compaction` only: what was compacted; `content` is the summary.
    compaction: CompactionOut | None = None


class MessagePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[MessageOut]
    # Pass it back as `after` (order=asc) or as `before` (order=desc); null at the end.
    next: int | None


async def read_view(
    runtime: Runtime, name: str, min_position: int | None, read: Callable[[Sql], T]
) -> T:
    """Waits for read model `name` to reach `min_position`, then runs `read(sql)` in one
    read transaction, off the event loop."""
    read_models = runtime.read_models
    await read_models.wait(name, min_position, runtime.settings.read_wait_seconds)
    view = read_models.view(name)

    def in_transaction() -> T:
        with view.read() as sql:
            return read(sql)

    return await asyncio.to_thread(in_transaction)


def reject_unknown_parameters(request: Request[Any, Any, Any], known: frozenset[str]) -> None:
    for name in request.query_params:
        # `access_token` is a way to authenticate (a JWT), on every route.
        if name not in known and name != "access_token":
            raise BadRequest(f"unknown query parameter {name!r}", extra={"field": name})


CURSOR_PATTERN = r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""A page cursor: `<microseconds since the epoch>_<id>` of the last item of the page before.
Every value of this form is a valid place to start after, so the schema can say exactly
which cursors the server takes."""

Cursor = Annotated[
    str | None,
    QueryParameter(pattern=CURSOR_PATTERN, description="`next` of the page before"),
]


def encode_cursor(micros: int, item_id: str) -> str:
    return f"{micros}_{item_id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """A cursor the query parameter's pattern admitted: (microseconds, id)."""
    micros, _, item_id = cursor.partition("_")
    return int(micros), item_id


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def summary_out(summary: ConversationSummary) -> ConversationSummaryOut:
    return ConversationSummaryOut(
        id=summary.id,
        owner=summary.owner,
        agent=summary.agent,
        title=summary.title,
        created_at=_iso(summary.created_at),
        last_activity_at=_iso(summary.last_activity_at),
        message_count=summary.message_count,
        run_status=summary.run_status,
        position=summary.position,
    )


def message_out(message: Message) -> MessageOut:
    return MessageOut(
        message_id=message.message_id,
        run_id=message.run_id,
        role=message.role,
        content=message.content,
        position=message.position,
        created_at=_iso(message.created_at),
        tool_calls=None
        if message.tool_calls is None
        else [
            ToolCallOut(
                tool_call_id=call.tool_call_id,
                name=call.tool_name,
                args=call.args,
                result=call.result,
                error=call.error,
            )
            for call in message.tool_calls
        ],
        output=message.output,
        erased=message.erased,
        compaction=None if message.compaction is None else CompactionOut(**message.compaction),
    )


def opened_message(message: Message, keys: ContentKeys) -> Message:
    """The message with its sealed content opened (None where erased)."""
    content = keys.open(message.content)
    calls = message.tool_calls
    if calls is not None:
        calls = [
            replace(
                call,
                args=keys.open(call.args).value,
                result=keys.open(call.result).value,
                error=keys.open(call.error).value,
            )
            for call in calls
        ]
    output = keys.open(message.output)
    return replace(
        message,
        content=content.value,
        tool_calls=calls,
        output=output.value,
        erased=content.erased or output.erased,
    )


_LIST_PARAMETERS = frozenset(
    {"agent", "status", "q", "archived", "cursor", "limit", "min_position"}
)
_MESSAGE_PARAMETERS = frozenset({"after", "before", "order", "limit", "min_position"})


@get(
    "/v1/conversations",
    summary="The caller's conversations, newest activity first",
    tags=["conversations"],
    dependencies={"owner": Provide(owner_of, sync_to_thread=False)},
    guards=USER,
)
async def list_conversations_page(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    owner: NamedDependency[str],
    agent: Annotated[str | None, QueryParameter(description="Only this agent's")] = None,
    status: Annotated[
        RunStatus | None, QueryParameter(description="The conversation's runs")
    ] = None,
    q: Annotated[str | None, QueryParameter(description="Title contains (any case)")] = None,
    archived: Annotated[
        bool, QueryParameter(description="List archived conversations instead")
    ] = False,
    cursor: Cursor = None,
    limit: Limit = None,
    min_position: MinPosition = None,
) -> ConversationListPage:
    reject_unknown_parameters(request, _LIST_PARAMETERS)
    settings = runtime.settings
    page_size = min(limit or settings.page_size, settings.max_page_size)
    query = ListQuery(
        owner=owner,
        limit=page_size + 1,
        agent=agent,
        status=status,
        title_contains=q,
        archived=archived,
        after=decode_cursor(cursor) if cursor is not None else None,
    )
    rows = await read_view(
        runtime, ConversationList.name, min_position, lambda sql: list_conversations(sql, query)
    )
    more = len(rows) > page_size
    rows = rows[:page_size]
    return ConversationListPage(
        items=[summary_out(row) for row in rows],
        next=encode_cursor(to_micros(rows[-1].last_activity_at), rows[-1].id) if more else None,
    )


@get(
    "/v1/conversations/{conversation_id:uuid}/messages",
    summary="A conversation's messages, oldest first or newest first",
    description=(
        "`order=asc` (the default) pages from the oldest message on: pass `next` back as "
        "`after`. `order=desc` pages from the newest back (a transcript that opens on its "
        "latest messages and loads older ones on demand): pass `next` back as `before`. "
        "Either reads one range of the read model's (conversation, position) index, so "
        "the newest page of a long conversation is as quick as that of a short one. "
        "Where the history was compacted for the model (HistoryCompacted) an item of role "
        "`compaction` holds the summary; every message stays listed."
    ),
    tags=["conversations"],
    guards=USER,
)
async def messages_page(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    conversation_id: FromPath[UUID],
    after: Annotated[
        int | None, QueryParameter(ge=0, le=MAX_POSITION, description="Only positions after it")
    ] = None,
    before: Annotated[
        int | None, QueryParameter(ge=1, le=MAX_POSITION, description="Only positions before it")
    ] = None,
    order: Annotated[
        Literal["asc", "desc"],
        QueryParameter(description="asc (oldest first, the default) or desc"),
    ] = "asc",
    limit: Limit = None,
    min_position: MinPosition = None,
) -> MessagePage:
    reject_unknown_parameters(request, _MESSAGE_PARAMETERS)
    settings = runtime.settings
    page_size = min(limit or settings.page_size, settings.max_page_size)
    await owned_conversation(runtime, request, conversation_id)
    rows = await read_view(
        runtime,
        MessageHistory.name,
        min_position,
        lambda sql: [
            opened_message(message, runtime.content)
            for message in read_messages(
                sql,
                str(conversation_id),
                after=after or 0,
                before=before,
                limit=page_size + 1,
                newest_first=order == "desc",
            )
        ],
    )
    more = len(rows) > page_size
    rows = rows[:page_size]
    return MessagePage(
        items=[message_out(row) for row in rows],
        next=rows[-1].position if more else None,
    )


READ_HANDLERS = [list_conversations_page, messages_page]
"""Plain handlers, not a Controller: `ConversationController` owns these paths for POST,
and Litestar refuses a second controller on a path (both bring an OPTIONS handler).
Register them after `ConversationController`."""
