"""A run's stored events as an A2A task: the snapshot (`Task`) and the stream of updates.

A context is a conversation (`contextId` = conversation id), a task is a run (`id` =
run id). `TaskFold` applies a conversation's events in position order, from the run's
`MessagePosted` on, and answers each with the A2A stream items it makes (none for events
of other runs). Every item carries threadlog's position in its `metadata`
(`{"threadlog": {"position": N, "type": "<EventType>"}}`) and as its SSE `id:`: that
position is the cursor a re-subscribe resumes after (docs/a2a.md).

| stored event | A2A |
| --- | --- |
| `MessagePosted` | the task's first `history` message (role user); state submitted |
| `RunStarted` | status update: working (a retry restarts the reply artifact) |
| `TokenStreamed` | artifact update of artifact `reply`: the delta as a text part, appended |
| `ToolCallStarted`, `ToolCallCompleted` | status update: working, with a data part of the call |
| `RunProgressReported` | status update: working, the note as text, the percent in metadata |
| `MessageCompleted` | artifact update, last chunk (structured output: a data part); the |
|  | reply joins `history` (role agent) |
| `RunCompleted` | status update: completed |
| `RunFailed`, `RunInterrupted` (no retry) | status update: failed, the error as text |
| `RunInterrupted` (retry) | status update: working, saying it starts again |
| `RunCancelled` | status update: canceled |
"""

from typing import Any

import msgspec

from threadlog.http.a2a_protocol import (
    TERMINAL_STATES,
    Artifact,
    Message,
    Part,
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)

REPLY_ARTIFACT = "reply"


class LoggedItem(msgspec.Struct, frozen=True):
    """A stored event as served (content opened): what the mapping reads of it."""

    type: str
    position: int
    timestamp: str
    data: dict[str, Any]


_item_decoder = msgspec.json.Decoder(LoggedItem)


def logged_item(payload: bytes) -> LoggedItem:
    """From an event's served JSON (an SSE frame's `data`, a `FeedEvent.payload`)."""
    return _item_decoder.decode(payload)


def _rfc3339(timestamp: str) -> str:
    return timestamp[:-6] + "Z" if timestamp.endswith("+00:00") else timestamp


def _meta(item: LoggedItem, **extra: Any) -> dict[str, Any]:
    return {"threadlog": {"position": item.position, "type": item.type, **extra}}


class TaskFold:
    """One run's task as its events so far make it."""

    def __init__(self, run_id: str, context_id: str) -> None:
        self.run_id = run_id
        self.context_id = context_id
        self.state: TaskState = "TASK_STATE_SUBMITTED"
        self.status_message: Message | None = None
        self.timestamp: str | None = None
        self.position = 0
        """The position of the last event applied (of this run or not)."""
        self.found = False
        """Whether the run's MessagePosted was applied."""
        self.history: list[Message] = []
        self._reply: list[str] = []
        self._output: Any = None
        self._chunks = 0  # artifact chunks of the current attempt

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    def apply(self, item: LoggedItem) -> list[StreamResponse]:
        """Applies one event; the stream items it makes (none for other runs' events)."""
        self.position = max(self.position, item.position)
        data = item.data
        if data.get("run_id") != self.run_id or self.ended:
            return []
        handler = _HANDLERS.get(item.type)
        if handler is None:
            return []
        return handler(self, item, data)

    def task(self, history_length: int | None = None) -> Task:
        history = self.history
        if history_length is not None:
            history = history[len(history) - history_length :] if history_length else []
        artifacts = []
        if self._chunks or self._output is not None:
            artifacts.append(
                Artifact(artifact_id=REPLY_ARTIFACT, name=REPLY_ARTIFACT, parts=self._parts())
            )
        return Task(
            id=self.run_id,
            context_id=self.context_id,
            status=TaskStatus(
                state=self.state, message=self.status_message, timestamp=self.timestamp
            ),
            artifacts=artifacts,
            history=list(history),
            metadata={"threadlog": {"position": self.position}},
        )

    def _parts(self) -> list[Part]:
        parts = [Part(text="".join(self._reply))]
        if self._output is not None:
            parts.append(Part(data=self._output))
        return parts

    # --- one method per event type ---

    def _status(
        self,
        item: LoggedItem,
        state: TaskState,
        parts: list[Part] | None = None,
        **meta: Any,
    ) -> list[StreamResponse]:
        self.state = state
        self.timestamp = _rfc3339(item.timestamp)
        self.status_message = (
            Message(
                message_id=f"{self.run_id}-{item.position}",
                role="ROLE_AGENT",
                parts=parts,
                context_id=self.context_id,
                task_id=self.run_id,
            )
            if parts
            else None
        )
        update = TaskStatusUpdateEvent(
            task_id=self.run_id,
            context_id=self.context_id,
            status=TaskStatus(state=state, message=self.status_message, timestamp=self.timestamp),
            metadata=_meta(item, **meta),
        )
        return [StreamResponse(status_update=update)]

    def _artifact(
        self, item: LoggedItem, parts: list[Part], *, last: bool = False
    ) -> list[StreamResponse]:
        update = TaskArtifactUpdateEvent(
            task_id=self.run_id,
            context_id=self.context_id,
            artifact=Artifact(artifact_id=REPLY_ARTIFACT, name=REPLY_ARTIFACT, parts=parts),
            append=self._chunks > 0,
            last_chunk=last,
            metadata=_meta(item),
        )
        self._chunks += 1
        return [StreamResponse(artifact_update=update)]

    def _posted(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        self.found = True
        self.timestamp = _rfc3339(item.timestamp)
        self.history.append(
            Message(
                # The sender's A2A messageId (threadlog's client_message_id) where it gave one.
                message_id=str(data.get("client_message_id") or data.get("message_id")),
                role="ROLE_USER",
                parts=[Part(text=data.get("content") or "")],
                context_id=self.context_id,
                task_id=self.run_id,
            )
        )
        return []

    def _started(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        self._reply, self._output, self._chunks = [], None, 0  # a retry starts over
        return self._status(item, "TASK_STATE_WORKING", model=data.get("model"))

    def _token(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        delta = data.get("delta") or ""
        self._reply.append(delta)
        return self._artifact(item, [Part(text=delta)])

    def _tool(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        call = {k: v for k, v in data.items() if k != "run_id"}
        return self._status(item, "TASK_STATE_WORKING", [Part(data=call)])

    def _progress(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        note = data.get("note") or ""
        return self._status(
            item, "TASK_STATE_WORKING", [Part(text=note)], percent=data.get("percent")
        )

    def _completed_message(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        content = data.get("content") or ""
        output = data.get("output")
        parts: list[Part] = []
        if not self._chunks:
            parts.append(Part(text=content))
        if output is not None:
            parts.append(Part(data=output))
        if not parts:
            parts.append(Part(text=""))
        self._reply, self._output = [content], output
        self.history.append(
            Message(
                message_id=str(data.get("message_id")),
                role="ROLE_AGENT",
                parts=[Part(text=content)],
                context_id=self.context_id,
                task_id=self.run_id,
            )
        )
        return self._artifact(item, parts, last=True)

    def _run_completed(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        return self._status(
            item, "TASK_STATE_COMPLETED", usage=data.get("usage"), cost_usd=data.get("cost_usd")
        )

    def _failed(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        text = f"{data.get('error')}: {data.get('message')}"
        return self._status(item, "TASK_STATE_FAILED", [Part(text=text)], error=data.get("error"))

    def _interrupted(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        reason = data.get("reason") or ""
        if data.get("retry"):
            text = f"interrupted ({reason}); the run starts again"
            return self._status(item, "TASK_STATE_WORKING", [Part(text=text)], retry=True)
        text = f"interrupted: {reason}"
        return self._status(item, "TASK_STATE_FAILED", [Part(text=text)], error="interrupted")

    def _cancelled(self, item: LoggedItem, data: dict[str, Any]) -> list[StreamResponse]:
        reason = data.get("reason") or "cancelled"
        return self._status(item, "TASK_STATE_CANCELED", [Part(text=reason)])


_HANDLERS = {
    "MessagePosted": TaskFold._posted,
    "RunStarted": TaskFold._started,
    "TokenStreamed": TaskFold._token,
    "ToolCallStarted": TaskFold._tool,
    "ToolCallCompleted": TaskFold._tool,
    "RunProgressReported": TaskFold._progress,
    "MessageCompleted": TaskFold._completed_message,
    "RunCompleted": TaskFold._run_completed,
    "RunFailed": TaskFold._failed,
    "RunInterrupted": TaskFold._interrupted,
    "RunCancelled": TaskFold._cancelled,
}
