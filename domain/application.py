"""The conversation application service: one method per use case.

Methods block (eventsourcing is synchronous); async callers run them off the
event loop. Persistence is chosen by the environment the composition root passes in.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Recording

from threadlog.domain.content import Seal, plaintext_seals
from threadlog.domain.conversation import Conversation, ModelOf, PostedMessage, validate_content
from threadlog.domain.errors import ConcurrentWrite, ConversationNotFound
from threadlog.domain.events import Cause

T = TypeVar("T")

CommitListener = Callable[[Sequence[Recording[UUID]]], None]

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
DECIDE_ATTEMPTS = 8


@dataclass(frozen=True, kw_only=True)
class Written(Generic[T]):
    """The outcome of a write and the global position the store reached with it."""

    value: T
    global_position: int | None


def last_global_position(recordings: Sequence[Recording[UUID]]) -> int | None:
    return recordings[-1].notification.id if recordings else None


class ConversationService(Application[UUID]):
    name = "threadlog"
    is_snapshotting_enabled = True

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        seal_for: Callable[[str], Seal] = plaintext_seals,
    ) -> None:
        super().__init__(env)
        self.max_message_bytes = max_message_bytes
        # The owner's seal: personal content is recorded sealed (domain/content.py).
        self.seal_for = seal_for
        self._commit_listeners: list[CommitListener] = []

    def on_commit(self, listener: "CommitListener") -> None:
        """`listener(recordings)` runs after every save, in the saving thread, with
        exactly the events that save committed: the live path starts there."""
        self._commit_listeners.append(listener)

    def committed(self, recordings: list[Recording[UUID]]) -> None:
        """Tells the commit listeners of events stored without `save` or `append` (a
        writer that sends its statements itself, asynchronously)."""
        self._notify(recordings)

    def _notify(self, recordings: list[Recording[UUID]]) -> None:
        for listener in self._commit_listeners:
            listener(recordings)

    def start_conversation(
        self,
        *,
        owner: str,
        agent: str,
        title: str,
        metadata: dict[str, Any],
        cause: Cause,
        busy_policy: str = "reject",
        conversation_id: UUID | None = None,
    ) -> Written[Conversation]:
        conversation = Conversation.start(
            owner=owner,
            agent=agent,
            title=title,
            metadata=metadata,
            cause=cause,
            busy_policy=busy_policy,
            conversation_id=conversation_id,
        )
        recordings = self.save(conversation)
        return Written(value=conversation, global_position=last_global_position(recordings))

    def get_conversation(self, conversation_id: UUID) -> Conversation:
        try:
            conversation: Conversation = self.repository.get(conversation_id)
        except AggregateNotFoundError:
            raise ConversationNotFound(conversation_id) from None
        return conversation

    def post_message(
        self,
        conversation_id: UUID,
        *,
        content: str,
        client_message_id: str | None,
        model: ModelOf,
        cause: Cause,
    ) -> Written[PostedMessage]:
        """Appends a user message and the run it starts (or queues it)."""
        validate_content(content, self.max_message_bytes)
        return self._decide(
            conversation_id,
            lambda c: c.post_message(
                content=self.seal_for(c.owner)(content),
                client_message_id=client_message_id,
                model=model,
                cause=cause,
            ),
        )

    def rename(self, conversation_id: UUID, *, title: str, cause: Cause) -> Written[Conversation]:
        return self._change(conversation_id, lambda c: c.rename(title=title, cause=cause))

    def archive(self, conversation_id: UUID, *, cause: Cause) -> Written[Conversation]:
        return self._change(conversation_id, lambda c: c.archive(cause=cause))

    def cancel_queued_run(
        self, conversation_id: UUID, *, run_id: str, cause: Cause
    ) -> Written[Conversation]:
        return self._change(
            conversation_id, lambda c: c.cancel_queued_run(run_id=run_id, cause=cause)
        )

    def clear_history(self, conversation_id: UUID, *, cause: Cause) -> Written[Conversation]:
        return self._change(conversation_id, lambda c: c.clear_history(cause=cause))

    def interrupt_run(
        self, conversation_id: UUID, *, run_id: str, reason: str, max_retries: int, cause: Cause
    ) -> Written[bool | None]:
        """The process running `run_id` is gone: the run ends as interrupted, or starts
        again while it has had at most `max_retries` retries. The value says whether it
        starts again; None when the run had already ended."""

        def decide(conversation: Conversation) -> bool | None:
            if conversation.active_run_id != run_id:
                return None
            retry = conversation.active_attempt <= max_retries
            conversation.interrupt_run(run_id=run_id, reason=reason, retry=retry, cause=cause)
            return retry

        return self._decide(conversation_id, decide)

    def fail_run(
        self, conversation_id: UUID, *, run_id: str, error: str, message: str, cause: Cause
    ) -> Written[Conversation]:
        """Ends the run as failed, unless it has already ended."""

        def fail(conversation: Conversation) -> None:
            if conversation.active_run_id == run_id:
                conversation.fail_run(run_id=run_id, error=error, message=message, cause=cause)

        return self._change(conversation_id, fail)

    def _change(
        self, conversation_id: UUID, change: Callable[[Conversation], None]
    ) -> Written[Conversation]:
        def decide(conversation: Conversation) -> Conversation:
            change(conversation)
            return conversation

        return self._decide(conversation_id, decide)

    def _decide(self, conversation_id: UUID, decide: Callable[[Conversation], T]) -> Written[T]:
        """Loads, decides, saves what was decided; decides again on the fresh state when
        another writer appended first (a run streaming tokens appends every few
        milliseconds, so a few rounds may be needed). A decision that records nothing
        (a duplicate post, a second archive) saves nothing and reaches no new global
        position."""
        for attempt in range(DECIDE_ATTEMPTS):
            conversation = self.get_conversation(conversation_id)
            outcome = decide(conversation)
            if not conversation.pending_events:
                return Written(value=outcome, global_position=None)
            try:
                recordings = self.save(conversation)
            except IntegrityError:
                if attempt < DECIDE_ATTEMPTS - 1:
                    continue
                raise ConcurrentWrite(conversation_id) from None
            return Written(value=outcome, global_position=last_global_position(recordings))
        raise AssertionError("unreachable")

    def append(self, events: Sequence[DomainEventProtocol[UUID]]) -> list[Recording[UUID]]:
        """Stores events already decided by a live aggregate (the run executor's path).

        Straight to the event store: `save(*events)` checks each event against a runtime
        Protocol, a tenth of a token's write cost (bench/token_write.py's profile)."""
        recordings = self.events.put(list(events))
        self._notify(recordings)
        return recordings

    def remember(self, conversation: Conversation) -> None:
        """Keeps a live aggregate whose every event is stored as the repository's cached
        copy. Events appended without `save` (a run's) are not in the cache: the next
        load would replay them all onto the copy cached before the run (500 tokens:
        tens of milliseconds of CPU, for each run that ends). Hand over an aggregate no
        one changes any more: loads copy it, and fast-forward it past later events."""
        assert not conversation.pending_events
        cache = self.repository.cache
        if cache is not None:
            cache.put(conversation.id, conversation)

    def snapshot(self, conversation: Conversation) -> None:
        """Snapshots a live aggregate whose every event is stored, bounding load time."""
        assert self.snapshots is not None
        assert not conversation.pending_events
        self.snapshots.put([Conversation.Snapshot.take(conversation)])
