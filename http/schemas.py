"""Wire schemas: msgspec Structs that validate at the boundary."""

from typing import Annotated, Any, Literal

import msgspec

from threadlog.infra.store.envelope import EventEnvelope

NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
"""A character that is not white space, alike in Python's `re` (which msgspec validates
with) and in the ECMAScript regexes of JSON Schema (which clients and schemathesis read):
`\\S` differs between the two (Python counts \x1c-\x1f and \x85 as space, ECMAScript
\ufeff), so the union of both spaces is spelled out."""
# Not only white space (the domain refuses a blank title).
Title = Annotated[str, msgspec.Meta(max_length=200, pattern=NOT_BLANK)]
AgentName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
ClientMessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# At least one character that is not white space (the domain refuses a blank message);
# its size in bytes is limited by THREADLOG_MAX_MESSAGE_BYTES (413), which JSON Schema
# cannot state.
Content = Annotated[str, msgspec.Meta(pattern=NOT_BLANK)]


class CreateConversation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent: AgentName | None = None
    title: Title | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # What a message arriving during a run does: 409 (reject), wait its turn (enqueue),
    # or cancel the active run and start (interrupt).
    busy_policy: Literal["reject", "enqueue", "interrupt"] = "reject"


class UpdateConversation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """At least one of the two (the OpenAPI schema says `minProperties: 1`)."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    # Archiving is one-way: the events stay, the conversation leaves the owner's list.
    archived: Literal[True] | msgspec.UnsetType = msgspec.UNSET


class ConversationOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    owner: str
    agent: str
    title: str
    metadata: dict[str, Any]
    busy_policy: str
    queued_messages: int
    archived: bool
    created_at: str
    updated_at: str
    position: int
    message_count: int
    active_run_id: str | None
    global_position: int | None = None


class PostMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    content: Content
    client_message_id: ClientMessageId | None = None


class MessageAccepted(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    message_id: str
    run_id: str
    position: int
    global_position: int | None
    duplicate: bool
    queued: bool
    events_url: str


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: str
    run_id: str
    message_id: str
    status: str
    position: int | None
    reply_message_id: str | None
    reply: str | None
    usage: dict[str, Any] | None
    error: str | None
    error_message: str | None


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[EventEnvelope]
    next: int | None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: str
    message: str
    details: Any
    request_id: str | None


class HealthOut(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)
