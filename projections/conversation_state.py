"""A conversation as it stood at a position: its events folded into one view.

Messages are the user messages and completed assistant messages (a `HistoryCleared`
restarts them, as in the message history); an assistant message lists its run's tool
calls in brief. A run active at that position shows the text streamed so far (its
`TokenStreamed` deltas since its latest `RunStarted`: a retry starts over).
Pure: feed events in position order, read `state()`.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

from threadlog.domain.conversation import RUN_ENDINGS
from threadlog.domain.events import (
    ConversationArchived,
    ConversationEvent,
    ConversationRenamed,
    ConversationStarted,
    HistoryCleared,
    MessageCompleted,
    MessagePosted,
    RunStarted,
    TokenStreamed,
    ToolCallCompleted,
    ToolCallStarted,
)

ToolCallStatus = Literal["running", "completed", "failed"]


@dataclass(frozen=True, kw_only=True)
class ToolCallSummary:
    tool_call_id: str
    tool_name: str
    status: ToolCallStatus
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class StateMessage:
    message_id: str
    run_id: str
    role: str
    content: str | None  # None: erased with its owner's keys
    position: int
    tool_calls: tuple[ToolCallSummary, ...] | None = None
    """An assistant message's tool calls (None for a user message)."""


@dataclass(frozen=True, kw_only=True)
class ActiveRun:
    run_id: str
    message_id: str
    partial_text: str
    tool_calls: tuple[ToolCallSummary, ...]


@dataclass(frozen=True, kw_only=True)
class ConversationState:
    conversation_id: str
    position: int
    timestamp: str
    owner: str
    agent: str
    title: str
    archived: bool
    messages: tuple[StateMessage, ...]
    active_run: ActiveRun | None
    queued_message_ids: tuple[str, ...]
    last_hash: str


@dataclass
class _Run:
    run_id: str
    message_id: str
    text: list[str] = field(default_factory=list)
    calls: dict[str, ToolCallSummary] = field(default_factory=dict)


class StateFold:
    """Folds a conversation's events, in position order, into its state."""

    def __init__(self) -> None:
        self._started: ConversationStarted | None = None
        self._last: ConversationEvent | None = None
        self._title = ""
        self._archived = False
        self._messages: list[StateMessage] = []
        self._run: _Run | None = None
        self._queue: dict[str, str] = {}  # run id -> message id, in arrival order

    def apply(self, event: ConversationEvent) -> None:
        self._last = event
        if isinstance(event, ConversationStarted):
            self._started, self._title = event, event.title
        elif isinstance(event, ConversationRenamed):
            self._title = event.title
        elif isinstance(event, ConversationArchived):
            self._archived = True
        elif isinstance(event, HistoryCleared):
            self._messages.clear()
        elif isinstance(event, MessagePosted):
            self._messages.append(_message(event))
            if event.queued:
                self._queue[event.run_id] = event.message_id
        elif isinstance(event, RunStarted):
            self._queue.pop(event.run_id, None)
            self._run = _Run(run_id=event.run_id, message_id=event.message_id)
        else:
            self._apply_run_event(event)

    def _apply_run_event(self, event: ConversationEvent) -> None:
        run = self._run
        if run is None or getattr(event, "run_id", None) != run.run_id:
            return
        if isinstance(event, TokenStreamed):
            if event.delta is not None:  # None: erased
                run.text.append(event.delta)
        elif isinstance(event, ToolCallStarted):
            run.calls[event.tool_call_id] = ToolCallSummary(
                tool_call_id=event.tool_call_id, tool_name=event.tool_name, status="running"
            )
        elif isinstance(event, ToolCallCompleted):
            started = run.calls.get(event.tool_call_id) or ToolCallSummary(
                tool_call_id=event.tool_call_id, tool_name=event.tool_name, status="running"
            )
            status: ToolCallStatus = "failed" if event.error is not None else "completed"
            run.calls[event.tool_call_id] = replace(started, status=status, error=event.error)
        elif isinstance(event, MessageCompleted):
            tool_calls = tuple(run.calls.values())
            self._messages.append(replace(_message(event), tool_calls=tool_calls))
        elif isinstance(event, RUN_ENDINGS):
            self._run = None

    def state(self) -> ConversationState:
        started, last = self._started, self._last
        if started is None or last is None:
            raise ValueError("a conversation's state needs its ConversationStarted event first")
        run = self._run
        return ConversationState(
            conversation_id=str(started.originator_id),
            position=last.originator_version,
            timestamp=last.timestamp.isoformat(),
            owner=started.owner,
            agent=started.agent,
            title=self._title,
            archived=self._archived,
            messages=tuple(self._messages),
            active_run=None
            if run is None
            else ActiveRun(
                run_id=run.run_id,
                message_id=run.message_id,
                partial_text="".join(run.text),
                tool_calls=tuple(run.calls.values()),
            ),
            queued_message_ids=tuple(self._queue.values()),
            last_hash=last.hash,
        )


def _message(event: MessagePosted | MessageCompleted) -> StateMessage:
    return StateMessage(
        message_id=event.message_id,
        run_id=event.run_id,
        role=event.role,
        content=event.content,
        position=event.originator_version,
    )
