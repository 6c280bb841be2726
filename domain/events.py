"""The events of a conversation: each is its own type, named for what happened.

Every event carries its id, the conversation id (``originator_id``), its position
(``originator_version``), a timestamp, the actor, correlation and causation ids, a
schema version (the class's ``class_version``) and the ``prev_hash``/``hash`` link of
the conversation's hash chain. The rest of its fields are its ``data``.
"""

import dataclasses
import os
from datetime import datetime
from functools import cache, lru_cache
from typing import Any
from uuid import UUID, SafeUUID

from eventsourcing.domain import Aggregate

from threadlog.domain.chain import ChainFields, chain_hash

ENVELOPE_FIELDS = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "event_id",
        "actor",
        "correlation_id",
        "causation_id",
        "prev_hash",
        "hash",
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cause:
    """Who caused an event and why: the actor, the request and the prior event."""

    actor: str
    correlation_id: str
    causation_id: str | None = None


class ConversationEvent(Aggregate.Event):
    """Base of every conversation event: the envelope fields and the chain link."""

    event_id: UUID
    actor: str
    correlation_id: str
    causation_id: str | None
    prev_hash: str
    hash: str

    def apply(self, aggregate: Any) -> None:
        aggregate.last_hash = self.hash
        self.evolve(aggregate)

    def evolve(self, aggregate: Any) -> None:
        """Changes the aggregate's state; most events change nothing but the chain."""


BUSY_POLICIES = ("reject", "enqueue", "interrupt")


class ConversationStarted(ConversationEvent, Aggregate.Created):
    owner: str
    agent: str
    title: str
    metadata: dict[str, Any]
    # What a message arriving during a run does: one of BUSY_POLICIES.
    busy_policy: str


class ConversationRenamed(ConversationEvent):
    title: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.title = self.title


class ConversationArchived(ConversationEvent):
    """Hidden from its owner's list and closed to new messages; every event stays."""

    def evolve(self, aggregate: Any) -> None:
        aggregate.archived = True


class HistoryCleared(ConversationEvent):
    """The message history and the agent's context restart after this event.

    Nothing is deleted: every earlier event stays in the log for auditors."""


class HistoryCompacted(ConversationEvent):
    """A run's history outgrew its agent's context budget: from here on the model sees
    `summary` in place of the turns (a user message and its run's reply) whose user
    message is at a position <= `up_to_position`, then the later turns as they are.

    Nothing is deleted: the transcript and every earlier event stay. `tokens_before` and
    `tokens_after` are the history's size (instructions, summary, turns and prompt) as
    `tokenizer` counted it; `model` wrote the summary, at the cost of `usage`."""

    run_id: str
    up_to_position: int
    summary: str
    tokens_before: int
    tokens_after: int
    model: str
    tokenizer: str
    usage: dict[str, int]


class MessagePosted(ConversationEvent):
    message_id: str
    run_id: str
    role: str
    content: str
    client_message_id: str | None
    # True when it waits for the active run to end (the `enqueue` policy).
    queued: bool

    def evolve(self, aggregate: Any) -> None:
        aggregate.message_count += 1
        if self.queued:
            aggregate.queue.append([self.message_id, self.run_id, self.correlation_id])
        if self.client_message_id is not None:
            aggregate.client_messages[self.client_message_id] = [
                self.message_id,
                self.run_id,
                self.originator_version,
            ]


class RunStarted(ConversationEvent):
    """A run begins, or begins again after RunInterrupted(retry=True) under the same
    run id (its attempt number is how many RunStarted the run has had).

    `agent_id` and `agent_version` pin the version of the agent the run uses (version 2;
    runs recorded before agents were versioned have "" and 0)."""

    class_version = 2

    run_id: str
    message_id: str
    agent: str
    model: str
    settings: dict[str, Any]
    agent_id: str
    agent_version: int

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["agent_id"] = ""
        state["agent_version"] = 0

    def evolve(self, aggregate: Any) -> None:
        aggregate.agent_id = self.agent_id
        aggregate.agent_version = self.agent_version
        # getattr: snapshots taken before these attributes existed lack them.
        retried = self.run_id == getattr(aggregate, "last_run_id", None)
        aggregate.active_attempt = getattr(aggregate, "active_attempt", 0) + 1 if retried else 1
        aggregate.last_run_id = self.run_id
        aggregate.active_run_id = self.run_id
        aggregate.active_message_id = self.message_id
        aggregate.active_correlation_id = self.correlation_id
        aggregate.model = self.model
        aggregate.queue = [entry for entry in aggregate.queue if entry[1] != self.run_id]


class TokenStreamed(ConversationEvent):
    run_id: str
    part: int
    delta: str


class ToolCallStarted(ConversationEvent):
    """The model called a tool; `args` as the model sent them (an object, or raw text
    when they were not valid JSON)."""

    run_id: str
    tool_call_id: str
    tool_name: str
    args: Any


class ToolCallCompleted(ConversationEvent):
    """A tool call's outcome: its JSON-compatible `result`, or the `error` it raised
    (then `result` is None and the model decides how the run goes on)."""

    run_id: str
    tool_call_id: str
    tool_name: str
    result: Any
    error: str | None


class OutputPartial(ConversationEvent):
    """A validated partial of a run's structured output; the final one is in
    MessageCompleted.output."""

    run_id: str
    output: Any


class RunProgressReported(ConversationEvent):
    run_id: str
    percent: float
    note: str


class MessageCompleted(ConversationEvent):
    """The assembled assistant message. `output` is the structured output (None when
    the agent answers in text); `model_messages` is pydantic-ai's JSON of the run's
    messages, from which the next run's history is rebuilt."""

    class_version = 2

    message_id: str
    run_id: str
    role: str
    content: str
    model_messages: str
    output: Any

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["output"] = None

    def evolve(self, aggregate: Any) -> None:
        aggregate.message_count += 1


class RunCompleted(ConversationEvent):
    """A run's successful end: usage (input/output tokens, requests), its cost in US
    dollars when the model's price is known, and its timings."""

    class_version = 2

    run_id: str
    usage: dict[str, int]
    cost_usd: float | None
    duration_ms: float
    time_to_first_token_ms: float | None

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["cost_usd"] = None

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = None


class RunFailed(ConversationEvent):
    run_id: str
    error: str
    message: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = None


class RunInterrupted(ConversationEvent):
    """The process running a run died or stopped (its lease expired). With `retry`, the
    same run starts again right after; otherwise this is the run's end."""

    run_id: str
    reason: str
    retry: bool

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = None


class RunCancelled(ConversationEvent):
    """A run stopped on request; its streamed tokens stay, `partial_content` joins them.
    A queued run can be cancelled before it starts: it then leaves the queue."""

    run_id: str
    reason: str
    partial_content: str

    def evolve(self, aggregate: Any) -> None:
        if aggregate.active_run_id == self.run_id:
            aggregate.active_run_id = None
        aggregate.queue = [entry for entry in aggregate.queue if entry[1] != self.run_id]


# The version (4) and variant (RFC 4122) bits of a random UUID.
_UUID4_CLEAR = ~(0xC000 << 48 | 0xF000 << 64)
_UUID4_SET = 0x8000 << 48 | 0x4000 << 64
# An enum member read through its class costs a descriptor call: read once.
_UNKNOWN_SAFETY = SafeUUID.unknown


def new_event_id() -> UUID:
    """`uuid4()` at a third of its cost (each streamed token takes one): the same random
    bits and version, the UUID built without `UUID.__init__`'s checks of its arguments."""
    value = (int.from_bytes(os.urandom(16)) & _UUID4_CLEAR) | _UUID4_SET
    event_id = object.__new__(UUID)
    object.__setattr__(event_id, "int", value)
    object.__setattr__(event_id, "is_safe", _UNKNOWN_SAFETY)
    return event_id


@cache
def data_fields(event_class: type[ConversationEvent]) -> tuple[str, ...]:
    """The names of an event type's own fields (its ``data``), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(event_class) if f.name not in ENVELOPE_FIELDS)


def schema_version(event_class: type[ConversationEvent]) -> int:
    return int(getattr(event_class, "class_version", 1))


def event_data(event: ConversationEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in data_fields(type(event))}


def chain_document(
    *,
    type_name: str,
    event_id: UUID,
    conversation_id: UUID,
    position: int,
    timestamp: datetime,
    cause: Cause,
    version: int,
    data: dict[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    """What the hash covers: every field of the event but ``hash`` itself."""
    return {
        "id": str(event_id),
        "type": type_name,
        "conversation_id": str(conversation_id),
        "position": position,
        "timestamp": timestamp.isoformat(),
        "actor": cause.actor,
        "correlation_id": cause.correlation_id,
        "causation_id": cause.causation_id,
        "schema_version": version,
        "data": data,
        "prev_hash": prev_hash,
    }


def new_event_hash(
    *,
    type_name: str,
    event_id: UUID,
    conversation_id: UUID,
    position: int,
    timestamp: datetime,
    cause: Cause,
    version: int,
    data: dict[str, Any],
    prev_hash: str,
) -> str:
    """`chain_hash(chain_document(…))` of a new event, at half its cost."""
    # Positional: a dozen keyword arguments cost a microsecond on every token.
    return chain_hash(
        ChainFields(
            cause.actor,
            cause.causation_id,
            _id_text(conversation_id),
            cause.correlation_id,
            data,
            str(event_id),
            position,
            prev_hash,
            version,
            timestamp.isoformat(),
            type_name,
        )
    )


@lru_cache(maxsize=1024)
def _id_text(conversation_id: UUID) -> str:
    """A conversation's id as text, kept: each of its events' hashes takes it."""
    return str(conversation_id)


def event_chain_document(event: ConversationEvent) -> dict[str, Any]:
    """The chain document of a stored event, to verify its ``hash``."""
    return chain_document(
        type_name=type(event).__name__,
        event_id=event.event_id,
        conversation_id=event.originator_id,
        position=event.originator_version,
        timestamp=event.timestamp,
        cause=Cause(
            actor=event.actor,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
        ),
        version=schema_version(type(event)),
        data=event_data(event),
        prev_hash=event.prev_hash,
    )


def verify_event_hash(event: ConversationEvent) -> bool:
    return chain_hash(event_chain_document(event)) == event.hash
