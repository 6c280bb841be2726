"""How a run ended, read back from its events."""

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from threadlog.domain.events import (
    MessageCompleted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
)
from threadlog.infra.store.content import ContentKeys, opened_event
from threadlog.infra.store.eventstore import EventLog, topics_of

_OUTCOME_TOPICS = topics_of(MessageCompleted, RunCompleted, RunFailed, RunCancelled, RunInterrupted)


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    status: str  # completed | failed | cancelled | interrupted
    position: int
    reply_message_id: str | None = None
    reply: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    error_message: str | None = None


def run_outcome(
    event_log: EventLog, keys: ContentKeys, conversation_id: UUID, run_id: str, *, after: int
) -> RunOutcome | None:
    """The run's ending, or None while it runs (its reply opened; None where erased)."""
    reply: MessageCompleted | None = None
    for logged in event_log.read(conversation_id, after=after, topics=_OUTCOME_TOPICS):
        event = opened_event(keys, logged.event)
        if getattr(event, "run_id", None) != run_id:
            continue
        position = event.originator_version
        if isinstance(event, MessageCompleted):
            reply = event
        elif isinstance(event, RunCompleted):
            return RunOutcome(
                status="completed",
                position=position,
                reply_message_id=reply.message_id if reply else None,
                reply=reply.content if reply else None,
                usage=event.usage,
            )
        elif isinstance(event, RunFailed):
            return RunOutcome(
                status="failed", position=position, error=event.error, error_message=event.message
            )
        elif isinstance(event, RunCancelled):
            return RunOutcome(status="cancelled", position=position, reply=event.partial_content)
        elif isinstance(event, RunInterrupted) and not event.retry:
            return RunOutcome(
                status="interrupted",
                position=position,
                error="interrupted",
                error_message=event.reason,
            )
    return None
