"""The Conversation aggregate: one event stream per conversation.

Its version is the position of each event (1, 2, 3 …). State stays small: the
chain's last hash, the active run, and what idempotent posting needs. Messages
themselves are read back from the events, not kept here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate

from threadlog.domain.chain import GENESIS_HASH
from threadlog.domain.errors import (
    ConversationIsArchived,
    InvalidCompaction,
    InvalidConversation,
    InvalidMessage,
    InvalidProgress,
    MessageTooLarge,
    RunAlreadyActive,
    RunNotActive,
)
from threadlog.domain.events import (
    BUSY_POLICIES,
    Cause,
    ConversationArchived,
    ConversationEvent,
    ConversationRenamed,
    ConversationStarted,
    HistoryCleared,
    HistoryCompacted,
    MessageCompleted,
    MessagePosted,
    OutputPartial,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunProgressReported,
    RunStarted,
    TokenStreamed,
    ToolCallCompleted,
    ToolCallStarted,
    data_fields,
    event_data,
    new_event_hash,
    new_event_id,
    schema_version,
)


@dataclass(frozen=True)
class Pin:
    """What a run records of its agent: the model, and the agent's id and version."""

    model: str
    agent_id: str = ""
    agent_version: int = 0


ModelOf = str | Pin | Callable[[str], str | Pin]
"""A model name or a pin, or how to find the pin of a conversation's agent."""

RUN_ENDINGS = (RunCompleted, RunFailed, RunCancelled, RunInterrupted)
"""The events that end a run; exactly one ends each (RunInterrupted with retry=False)."""


@dataclass(frozen=True, kw_only=True)
class PostedMessage:
    """What posting a user message produced."""

    message_id: str
    run_id: str
    position: int
    duplicate: bool = False
    queued: bool = False


def _chained_fields(
    aggregate_id: UUID,
    position: int,
    prev_hash: str,
    event_class: type[ConversationEvent],
    cause: Cause,
    data: dict[str, Any],
) -> dict[str, Any]:
    """The envelope of a new event, its hash computed over the whole document: its
    fields but the originator's id and version, in the order the event declares them."""
    event_id = new_event_id()
    timestamp = event_class.create_timestamp()
    event_hash = new_event_hash(
        type_name=event_class.__name__,
        event_id=event_id,
        conversation_id=aggregate_id,
        position=position,
        timestamp=timestamp,
        cause=cause,
        version=schema_version(event_class),
        data=data,
        prev_hash=prev_hash,
    )
    return {
        "timestamp": timestamp,
        "event_id": event_id,
        "actor": cause.actor,
        "correlation_id": cause.correlation_id,
        "causation_id": cause.causation_id,
        "prev_hash": prev_hash,
        "hash": event_hash,
        **data,
    }


def _new_event(
    event_class: type[ConversationEvent], originator_id: UUID, version: int, fields: dict[str, Any]
) -> ConversationEvent:
    """`event_class(originator_id=…, originator_version=…, **fields)`, built without the
    dataclass constructor: a frozen dataclass sets each of its dozen fields through
    `object.__setattr__`, and every streamed token is an event. The same attributes in
    the same order (the stored state keeps it); fields missing, unknown or in another
    order go through the constructor, which refuses or orders them."""
    if tuple(fields) != _field_order(event_class):
        return event_class(originator_id=originator_id, originator_version=version, **fields)
    event = object.__new__(event_class)
    state = vars(event)
    state["originator_id"] = originator_id
    state["originator_version"] = version
    state.update(fields)
    return event


@cache
def _field_order(event_class: type[ConversationEvent]) -> tuple[str, ...]:
    """The fields `_new_event` sets, in the order the event declares them."""
    return _ENVELOPE_ORDER + data_fields(event_class)


# A new event's envelope fields (as `_chained_fields` gives them) in declaration order.
_ENVELOPE_ORDER = (
    "timestamp",
    "event_id",
    "actor",
    "correlation_id",
    "causation_id",
    "prev_hash",
    "hash",
)


def validate_content(content: str, max_bytes: int) -> bytes:
    """Checks a user message and returns its UTF-8 encoding."""
    if not content.strip():
        raise InvalidMessage("content must not be empty or only white space")
    try:
        encoded = content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(
            "content is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    if len(encoded) > max_bytes:
        raise MessageTooLarge(f"content is {len(encoded)} bytes; the limit is {max_bytes} bytes")
    return encoded


class Conversation(Aggregate):
    def __init__(
        self, owner: str, agent: str, title: str, metadata: dict[str, Any], busy_policy: str
    ) -> None:
        self.owner = owner
        self.agent = agent
        self.title = title
        self.metadata = metadata
        self.busy_policy = busy_policy
        # Queued user messages, oldest first: [message_id, run_id, correlation_id].
        self.queue: list[list[str]] = []
        self.archived = False
        self.model = ""  # the model of the latest run
        self.agent_id = ""  # the agent id and version the latest run pinned
        self.agent_version = 0
        self.active_message_id = ""
        self.active_correlation_id = ""
        self.last_hash = GENESIS_HASH
        self.active_run_id: str | None = None
        self.last_run_id: str | None = None
        self.active_attempt = 0  # 1 for a run's first attempt, 2 after one retry …
        self.message_count = 0
        # client_message_id -> [message_id, run_id, position], for idempotent posts.
        self.client_messages: dict[str, list[Any]] = {}

    @classmethod
    def start(
        cls,
        *,
        owner: str,
        agent: str,
        title: str,
        metadata: dict[str, Any],
        cause: Cause,
        busy_policy: str = "reject",
        conversation_id: UUID | None = None,
    ) -> "Conversation":
        """A new conversation; `conversation_id` when the client chose it (an AG-UI
        thread id), else a new one."""
        if busy_policy not in BUSY_POLICIES:
            raise InvalidConversation(f"busy_policy must be one of {', '.join(BUSY_POLICIES)}")
        conversation_id = conversation_id or uuid4()
        data = {
            "owner": owner,
            "agent": agent,
            "title": title,
            "metadata": metadata,
            "busy_policy": busy_policy,
        }
        fields = _chained_fields(conversation_id, 1, GENESIS_HASH, ConversationStarted, cause, data)
        return cls._create(ConversationStarted, id=conversation_id, **fields)

    def _record(self, event_class: type[ConversationEvent], cause: Cause, **data: Any) -> None:
        """`trigger_event`, with the chain's fields and the event built the fast way."""
        position = self.version + 1
        fields = _chained_fields(self.id, position, self.last_hash, event_class, cause, data)
        event = _new_event(event_class, self.id, position, fields)
        event.mutate(self)
        self.pending_events.append(event)

    def post_message(
        self, *, content: str, client_message_id: str | None, model: ModelOf, cause: Cause
    ) -> PostedMessage:
        """Records a user message and the run it starts, or queues it behind the active run.

        `model` is the model the run records, or how to find it from the conversation's agent.

        While a run is active, `enqueue` queues the message; `reject` and `interrupt`
        refuse it (interrupting is the caller's to do: cancel the run, then post again).
        """
        if client_message_id is not None and client_message_id in self.client_messages:
            message_id, run_id, position = self.client_messages[client_message_id]
            return PostedMessage(
                message_id=message_id, run_id=run_id, position=position, duplicate=True
            )
        if self.archived:
            raise ConversationIsArchived(self.id)
        busy = self.active_run_id is not None
        if busy and self.busy_policy != "enqueue":
            raise RunAlreadyActive(self.id, self.active_run_id or "", self.busy_policy)
        message_id, run_id = str(uuid4()), str(uuid4())
        self._record(
            MessagePosted,
            cause,
            message_id=message_id,
            run_id=run_id,
            role="user",
            content=content,
            client_message_id=client_message_id,
            queued=busy,
        )
        position = self.version
        if not busy:
            chosen = model if isinstance(model, str | Pin) else model(self.agent)
            pin = chosen if isinstance(chosen, Pin) else Pin(chosen)
            self._start_run(run_id, message_id, cause.correlation_id, pin)
        return PostedMessage(message_id=message_id, run_id=run_id, position=position, queued=busy)

    def _start_run(self, run_id: str, message_id: str, correlation_id: str, pin: Pin) -> None:
        self._record(
            RunStarted,
            Cause(actor="system", correlation_id=correlation_id, causation_id=message_id),
            run_id=run_id,
            message_id=message_id,
            agent=self.agent,
            model=pin.model,
            settings={},
            agent_id=pin.agent_id,
            agent_version=pin.agent_version,
        )

    @property
    def pin(self) -> Pin:
        """The pin of the latest run: a queued run and a retry use it too."""
        # getattr: snapshots taken before agents were versioned lack these attributes.
        return Pin(self.model, getattr(self, "agent_id", ""), getattr(self, "agent_version", 0))

    def _start_next_queued(self) -> None:
        """A run ended: the oldest queued message's run starts now."""
        if self.queue:
            message_id, run_id, correlation_id = self.queue[0]
            # A queued run uses the agent version of the run that just ended.
            self._start_run(run_id, message_id, correlation_id, self.pin)

    def rename(self, *, title: str, cause: Cause) -> None:
        if not title.strip():
            raise InvalidConversation("title must not be empty or only white space")
        if title != self.title:
            self._record(ConversationRenamed, cause, title=title)

    def archive(self, *, cause: Cause) -> None:
        """Archives the conversation (once; archiving it again changes nothing)."""
        if not self.archived:
            self._record(ConversationArchived, cause)

    def clear_history(self, *, cause: Cause) -> None:
        """The history and the agent's context restart here; refused during a run."""
        if self.active_run_id is not None:
            raise RunAlreadyActive(self.id, self.active_run_id)
        self._record(HistoryCleared, cause)

    def redo(self, event: ConversationEvent) -> None:
        """Records again, at this aggregate's next position, an event a stale copy decided.

        A run's executor decides events on its live copy; when another writer appended
        first, they are redone here. A RunStarted is derived again by the ending before it.
        """
        if isinstance(event, RunStarted):
            return
        run_id = getattr(event, "run_id", None)
        if run_id is not None:
            self._require_active(run_id)
        cause = Cause(
            actor=event.actor, correlation_id=event.correlation_id, causation_id=event.causation_id
        )
        self._record(type(event), cause, **event_data(event))
        if isinstance(event, RunInterrupted) and event.retry:
            self._restart_run(event.run_id)
        elif isinstance(event, RUN_ENDINGS):
            self._start_next_queued()

    def _require_active(self, run_id: str) -> None:
        if self.active_run_id != run_id:
            raise RunNotActive(run_id)

    def stream_token(self, *, run_id: str, part: int, delta: str, cause: Cause) -> None:
        self._require_active(run_id)
        self._record(TokenStreamed, cause, run_id=run_id, part=part, delta=delta)

    def start_tool_call(
        self, *, run_id: str, tool_call_id: str, tool_name: str, args: Any, cause: Cause
    ) -> None:
        self._require_active(run_id)
        self._record(
            ToolCallStarted,
            cause,
            run_id=run_id,
            tool_call_id=tool_call_id,
            tool_name=tool_name,
            args=args,
        )

    def complete_tool_call(
        self,
        *,
        run_id: str,
        tool_call_id: str,
        tool_name: str,
        result: Any,
        error: str | None,
        cause: Cause,
    ) -> None:
        self._require_active(run_id)
        self._record(
            ToolCallCompleted,
            cause,
            run_id=run_id,
            tool_call_id=tool_call_id,
            tool_name=tool_name,
            result=None if error is not None else result,
            error=error,
        )

    def report_output_partial(self, *, run_id: str, output: Any, cause: Cause) -> None:
        self._require_active(run_id)
        self._record(OutputPartial, cause, run_id=run_id, output=output)

    def report_progress(self, *, run_id: str, percent: float, note: str, cause: Cause) -> None:
        self._require_active(run_id)
        if not 0 <= percent <= 100:
            raise InvalidProgress(f"percent must be between 0 and 100, not {percent}")
        self._record(RunProgressReported, cause, run_id=run_id, percent=percent, note=note)

    def compact_history(
        self,
        *,
        run_id: str,
        up_to_position: int,
        summary: Any,
        tokens_before: int,
        tokens_after: int,
        model: str,
        tokenizer: str,
        usage: dict[str, int],
        cause: Cause,
    ) -> None:
        """Records that the active run's model sees `summary` (sealed) in place of the
        turns up to `up_to_position`, an earlier position of this conversation."""
        self._require_active(run_id)
        if not 1 <= up_to_position < self.version:
            raise InvalidCompaction(
                f"up_to_position must be an earlier position (1 to {self.version - 1}), "
                f"not {up_to_position}"
            )
        if min(tokens_before, tokens_after) < 0:
            raise InvalidCompaction("token counts must not be negative")
        self._record(
            HistoryCompacted,
            cause,
            run_id=run_id,
            up_to_position=up_to_position,
            summary=summary,
            tokens_before=tokens_before,
            tokens_after=tokens_after,
            model=model,
            tokenizer=tokenizer,
            usage=usage,
        )

    def complete_message(
        self,
        *,
        run_id: str,
        content: str,
        model_messages: str,
        cause: Cause,
        output: Any = None,
    ) -> str:
        self._require_active(run_id)
        message_id = str(uuid4())
        self._record(
            MessageCompleted,
            cause,
            message_id=message_id,
            run_id=run_id,
            role="assistant",
            content=content,
            model_messages=model_messages,
            output=output,
        )
        return message_id

    def complete_run(
        self,
        *,
        run_id: str,
        usage: dict[str, int],
        duration_ms: float,
        time_to_first_token_ms: float | None,
        cause: Cause,
        cost_usd: float | None = None,
    ) -> None:
        self._require_active(run_id)
        self._record(
            RunCompleted,
            cause,
            run_id=run_id,
            usage=usage,
            cost_usd=cost_usd,
            duration_ms=duration_ms,
            time_to_first_token_ms=time_to_first_token_ms,
        )
        self._start_next_queued()

    def interrupt_run(self, *, run_id: str, reason: str, retry: bool, cause: Cause) -> None:
        """The run's process is gone. With `retry` the same run starts again at once;
        otherwise the run ends here and the next queued message's run starts."""
        self._require_active(run_id)
        self._record(RunInterrupted, cause, run_id=run_id, reason=reason, retry=retry)
        if retry:
            self._restart_run(run_id)
        else:
            self._start_next_queued()

    def _restart_run(self, run_id: str) -> None:
        self._start_run(run_id, self.active_message_id, self.active_correlation_id, self.pin)

    def cancel_run(self, *, run_id: str, reason: str, partial_content: str, cause: Cause) -> None:
        self._require_active(run_id)
        self._record(
            RunCancelled, cause, run_id=run_id, reason=reason, partial_content=partial_content
        )
        self._start_next_queued()

    def cancel_queued_run(self, *, run_id: str, cause: Cause) -> None:
        """Cancels a run still waiting behind the active one (the `enqueue` policy)."""
        if not any(entry[1] == run_id for entry in self.queue):
            raise RunNotActive(run_id)
        self._record(RunCancelled, cause, run_id=run_id, reason="requested", partial_content="")

    def fail_run(self, *, run_id: str, error: str, message: str, cause: Cause) -> None:
        self._require_active(run_id)
        self._record(RunFailed, cause, run_id=run_id, error=error, message=message)
        self._start_next_queued()
