"""Errors the domain raises; http/ maps each to a status code in one place."""

from uuid import UUID


class DomainError(Exception):
    """Base of every error a client may cause."""

    code = "domain_error"


class ConversationNotFound(DomainError):
    code = "conversation_not_found"

    def __init__(self, conversation_id: UUID) -> None:
        super().__init__(f"conversation {conversation_id} does not exist")
        self.conversation_id = conversation_id


class RunAlreadyActive(DomainError):
    code = "run_active"

    def __init__(self, conversation_id: UUID, run_id: str, policy: str = "reject") -> None:
        super().__init__(
            f"conversation {conversation_id} already has an active run ({run_id}); "
            "wait for it to end before posting another message"
        )
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.policy = policy


class ConversationIsArchived(DomainError):
    code = "conversation_archived"

    def __init__(self, conversation_id: UUID) -> None:
        super().__init__(f"conversation {conversation_id} is archived; it takes no new messages")
        self.conversation_id = conversation_id


class InvalidConversation(DomainError):
    code = "invalid_conversation"


class InvalidMessage(DomainError):
    code = "invalid_message"


class InvalidProgress(DomainError):
    code = "invalid_progress"


class InvalidCompaction(DomainError):
    code = "invalid_compaction"


class MessageTooLarge(DomainError):
    code = "message_too_large"


class ConcurrentWrite(DomainError):
    """Another writer appended to the conversation first (optimistic concurrency)."""

    code = "concurrent_write"

    def __init__(self, conversation_id: UUID) -> None:
        super().__init__(f"conversation {conversation_id} was changed by another request; retry")
        self.conversation_id = conversation_id


class RunNotActive(DomainError):
    code = "run_not_active"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is not the conversation's active run")
        self.run_id = run_id


class RunAlreadyEnded(DomainError):
    code = "run_already_ended"

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} already ended ({status}); there is nothing to cancel")
        self.run_id = run_id
        self.status = status


class RunNotFound(DomainError):
    code = "run_not_found"

    def __init__(self, run_id: str, message: str | None = None) -> None:
        super().__init__(message or f"no active run {run_id}")
        self.run_id = run_id
