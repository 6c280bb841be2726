"""The events of a conversation: each is its own type, named for what happened.

Every event carries its id, the conversation id (``originator_id``), its position
(``originator_version``), a timestamp, the actor, correlation and causation ids, a
schema version (the class's ``class_version``) and the ``prev_hash``/``hash`` link of
the conversation's hash chain. The rest of its fields are its ``data``.
"""

import dataclasses
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from threadlog.domain.chain import chain_hash

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
    run_id: str
    message_id: str
    agent: str
    model: str
    settings: dict[str, Any]

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = self.run_id
        aggregate.active_message_id = self.message_id
        aggregate.active_correlation_id = self.correlation_id
        aggregate.model = self.model
        aggregate.queue = [entry for entry in aggregate.queue if entry[1] != self.run_id]


class TokenStreamed(ConversationEvent):
    run_id: str
    part: int
    delta: str


class MessageCompleted(ConversationEvent):
    message_id: str
    run_id: str
    role: str
    content: str
    model_messages: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.message_count += 1


class RunCompleted(ConversationEvent):
    run_id: str
    usage: dict[str, int]
    duration_ms: float
    time_to_first_token_ms: float | None

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = None


class RunFailed(ConversationEvent):
    run_id: str
    error: str
    message: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = None


class RunCancelled(ConversationEvent):
    """A run stopped on request; its streamed tokens stay, `partial_content` joins them."""

    run_id: str
    reason: str
    partial_content: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.active_run_id = None


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
