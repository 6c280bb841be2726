"""threadlog's stored events as AG-UI events (docs/ag-ui.md): the mapping, kept apart
from the route (http/agui.py) so that it can be read, tested and reused on its own.

An `AguiRun` follows one threadlog run of a thread and turns each of its stored events
(a `FeedEvent`: the served envelope's JSON) into zero or more AG-UI events, plain JSON
objects with the protocol's camelCase field names (`ag-ui-protocol` 1.0's models parse
each with no extra or missing field: tests/e2e/test_ag_ui.py). Every event carries the
position it came from, `metadata.threadlog = {"position": N, "cursor": C}`, and `C` is
its SSE `id:` too: `N` for the last AG-UI event made of stored event N, `N.k` for the
k-th (from 0) of the ones before it. Resuming after `C` gives exactly the events after
it: the mapping of an event depends only on the run's earlier events, so the state at
any cursor is rebuilt by mapping them again (`rebuild`).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from threadlog.domain.events import (
    MessagePosted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunStarted,
)
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.envelope import stored_envelopes
from threadlog.infra.store.eventstore import EventLog, topics_of
from threadlog.infra.stream.feed import FeedEvent, served_feed_event
from threadlog.projections.message_history import Message

PROTOCOL_VERSION = "1.0"
"""The AG-UI version these events follow (`ag-ui-protocol` 1.0.0, `@ag-ui/client` 1.0.0)."""
CUSTOM_PREFIX = "threadlog."
"""CUSTOM events carry threadlog events AG-UI has no event for: `threadlog.<EventType>`."""

AgEvent = dict[str, Any]

_RUN_TOPICS = topics_of(MessagePosted, RunStarted, RunCompleted, RunFailed, RunCancelled)
_INTERRUPTED = topics_of(RunInterrupted)


class _Envelope(msgspec.Struct):
    type: str
    position: int
    timestamp: str
    data: dict[str, Any] = {}


_decode = msgspec.json.Decoder(_Envelope).decode
_encode = msgspec.json.Encoder().encode


def _millis(timestamp: str) -> int | None:
    try:
        return int(datetime.fromisoformat(timestamp).timestamp() * 1000)
    except ValueError:
        return None


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else _encode(value).decode()


def text_message_id(run_id: str, index: int) -> str:
    """The id of the run's `index`-th streamed text message (from 0)."""
    return f"{run_id}.{index}"


def tool_result_id(tool_call_id: str) -> str:
    """The id of a tool call's result message (TOOL_CALL_RESULT and the snapshot's)."""
    return f"result-{tool_call_id}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """A place in an AG-UI stream: after stored event `position`, or, with `index`, after
    the `index`-th AG-UI event made of it (the rest of that event's follow)."""

    position: int
    index: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        head, _, tail = text.partition(".")
        return cls(int(head), int(tail) if tail else None)

    def __str__(self) -> str:
        return str(self.position) if self.index is None else f"{self.position}.{self.index}"


@dataclass(slots=True)
class _State:
    started: bool = False  # RUN_STARTED sent
    ended: bool = False  # RUN_FINISHED or RUN_ERROR sent
    text_id: str | None = None  # the open text message
    text_part: int = -1
    texts: int = 0  # text messages opened so far
    last_text_id: str | None = None
    steps: dict[str, str] = field(default_factory=dict)  # open steps by tool call id
    model: str | None = None
    output: Any = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One AG-UI event as an SSE event."""

    cursor: str
    event: AgEvent

    def sse(self) -> bytes:
        return b"id: %s\ndata: %s\n\n" % (self.cursor.encode(), _encode(self.event))


class AguiRun:
    """One threadlog run of a thread as one AG-UI run (`run_id`: the AG-UI run id the
    client asked with; threadlog's own is `metadata.threadlog.runId` on RUN_STARTED).
    With `run` None it adopts the first run it sees an event of."""

    def __init__(self, thread_id: str, agui_run_id: str, run: str | None) -> None:
        self.thread_id = thread_id
        self.agui_run_id = agui_run_id
        self.run = run
        self._state = _State()

    @property
    def ended(self) -> bool:
        return self._state.ended

    # The frames of a stream.

    def opening(self, cursor: Cursor, snapshot: AgEvent | None = None) -> list[Frame]:
        """What a stream starts with: RUN_STARTED, the snapshot if any, then whatever
        the run has open at the cursor (its text message, its steps) opened again."""
        state = self._state
        events: list[AgEvent] = [
            {
                "type": "RUN_STARTED",
                "threadId": self.thread_id,
                "runId": self.agui_run_id,
                "protocolVersion": PROTOCOL_VERSION,
            }
        ]
        if snapshot is not None:
            events.append(snapshot)
        if state.text_id is not None:
            events.append(
                {"type": "TEXT_MESSAGE_START", "messageId": state.text_id, "role": "assistant"}
            )
        events.extend({"type": "STEP_STARTED", "stepName": name} for name in state.steps.values())
        if state.ended:  # the run ended at the cursor: the stream ends at once
            events.append(
                {"type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.agui_run_id}
            )
        state.started = True
        text = str(cursor)
        threadlog: AgEvent = {"position": cursor.position, "cursor": text}
        if self.run is not None:
            threadlog["runId"] = self.run
        for event in events:
            event.setdefault("metadata", {}).setdefault("threadlog", {}).update(threadlog)
        return [Frame(text, event) for event in events]

    def frames(self, item: FeedEvent, skip: int | None = None) -> list[Frame]:
        """The AG-UI events of one stored event, each with its cursor; with `skip`, only
        those after the `skip`-th."""
        events = self.map(item)
        last = len(events) - 1
        frames = []
        for index, event in enumerate(events):
            cursor = str(item.position) if index == last else f"{item.position}.{index}"
            event["metadata"] = {"threadlog": {"position": item.position, "cursor": cursor}}
            if skip is None or index > skip:
                frames.append(Frame(cursor, event))
        return frames

    # The mapping.

    def map(self, item: FeedEvent) -> list[AgEvent]:
        """The AG-UI events of one stored event of the thread (none for another run's)."""
        envelope = _decode(item.payload)
        data = envelope.data or {}
        run_id = data.get("run_id")
        if not isinstance(run_id, str) or self._state.ended:
            return []
        if self.run is None:
            self.run = run_id
        if run_id != self.run:
            return []
        events = self._map(envelope.type, data)
        stamp = _millis(envelope.timestamp)
        if stamp is not None:
            for event in events:
                event["timestamp"] = stamp
        return events

    def _map(self, kind: str, data: dict[str, Any]) -> list[AgEvent]:
        state = self._state
        if kind == "RunStarted":
            state.model = data.get("model")
            return [] if state.started else self._run_started()
        if kind == "TokenStreamed":
            return self._token(int(data.get("part") or 0), data.get("delta"))
        if kind == "ToolCallStarted":
            return self._tool_call(data)
        if kind == "ToolCallCompleted":
            return self._tool_result(data)
        if kind == "MessageCompleted":
            return self._message_completed(data)
        if kind == "RunCompleted":
            return self._run_completed(data)
        if kind == "RunFailed":
            return self._run_error(str(data.get("message") or "the run failed"), data.get("error"))
        if kind == "RunCancelled":
            finished = {"outcome": {"type": "cancelled"}}
            return [*self._close(), *self._run_finished(finished)]
        if kind == "RunInterrupted":
            if data.get("retry"):  # the same run starts again: say so, it goes on
                return [*self._close(), self._custom(kind, data)]
            return self._run_error(
                str(data.get("reason") or "the run was interrupted"), "interrupted"
            )
        if kind in ("OutputPartial", "RunProgressReported"):
            return [self._custom(kind, data)]
        return []  # MessagePosted: the client's own message (the snapshot has it)

    def _run_started(self) -> list[AgEvent]:
        self._state.started = True
        return [
            {
                "type": "RUN_STARTED",
                "threadId": self.thread_id,
                "runId": self.agui_run_id,
                "protocolVersion": PROTOCOL_VERSION,
            }
        ]

    def _token(self, part: int, delta: Any) -> list[AgEvent]:
        state = self._state
        if not isinstance(delta, str) or not delta:
            return []  # erased content, or an empty delta (AG-UI wants a non-empty one)
        events: list[AgEvent] = []
        if state.text_id is None or state.text_part != part:
            events.extend(self._close_text())
            state.text_id = text_message_id(self.run or "", state.texts)
            state.text_part = part
            state.texts += 1
            events.append(
                {"type": "TEXT_MESSAGE_START", "messageId": state.text_id, "role": "assistant"}
            )
        events.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": state.text_id, "delta": delta})
        return events

    def _close_text(self) -> list[AgEvent]:
        state = self._state
        if state.text_id is None:
            return []
        event = {"type": "TEXT_MESSAGE_END", "messageId": state.text_id}
        state.last_text_id, state.text_id = state.text_id, None
        return [event]

    def _close(self) -> list[AgEvent]:
        events = self._close_text()
        steps = self._state.steps
        events.extend({"type": "STEP_FINISHED", "stepName": name} for name in steps.values())
        steps.clear()
        return events

    def _tool_call(self, data: dict[str, Any]) -> list[AgEvent]:
        state = self._state
        call_id = str(data.get("tool_call_id") or "")
        name = str(data.get("tool_name") or "")
        events = self._close_text()
        start: AgEvent = {"type": "TOOL_CALL_START", "toolCallId": call_id, "toolCallName": name}
        if state.last_text_id is not None:
            start["parentMessageId"] = state.last_text_id
        events.append(start)
        args = data.get("args")
        arguments = "" if args is None else _json_text(args)
        if arguments:
            events.append({"type": "TOOL_CALL_ARGS", "toolCallId": call_id, "delta": arguments})
        events.append({"type": "TOOL_CALL_END", "toolCallId": call_id})
        step = f"tool {name} {call_id}"
        state.steps[call_id] = step
        events.append({"type": "STEP_STARTED", "stepName": step})
        return events

    def _tool_result(self, data: dict[str, Any]) -> list[AgEvent]:
        call_id = str(data.get("tool_call_id") or "")
        events: list[AgEvent] = []
        step = self._state.steps.pop(call_id, None)
        if step is not None:
            events.append({"type": "STEP_FINISHED", "stepName": step})
        error = data.get("error")
        content = _json_text(error if error is not None else data.get("result"))
        events.append(
            {
                "type": "TOOL_CALL_RESULT",
                "messageId": tool_result_id(call_id),
                "toolCallId": call_id,
                "content": content,
                "role": "tool",
            }
        )
        return events

    def _message_completed(self, data: dict[str, Any]) -> list[AgEvent]:
        state = self._state
        events = self._close_text()
        state.output = data.get("output")
        content = data.get("content")
        if state.texts == 0 and isinstance(content, str) and content:
            # Nothing streamed as text (a structured output): the message whole.
            message_id = str(data.get("message_id") or text_message_id(self.run or "", 0))
            state.texts = 1
            state.last_text_id = message_id
            events += [
                {"type": "TEXT_MESSAGE_START", "messageId": message_id, "role": "assistant"},
                {"type": "TEXT_MESSAGE_CONTENT", "messageId": message_id, "delta": content},
                {"type": "TEXT_MESSAGE_END", "messageId": message_id},
            ]
        return events

    def _run_completed(self, data: dict[str, Any]) -> list[AgEvent]:
        finished: AgEvent = {"outcome": {"type": "success"}}
        if self._state.output is not None:
            finished["result"] = self._state.output
        usage = data.get("usage")
        if isinstance(usage, dict):
            entry: AgEvent = {}
            if self._state.model:
                entry["model"] = self._state.model
            tokens = {
                "inputTokens": usage.get("input_tokens"),
                "outputTokens": usage.get("output_tokens"),
            }
            entry.update({k: v for k, v in tokens.items() if isinstance(v, int) and v >= 0})
            if "inputTokens" in entry and "outputTokens" in entry:
                entry["totalTokens"] = entry["inputTokens"] + entry["outputTokens"]
            finished["usage"] = [entry]
        return [*self._close(), *self._run_finished(finished)]

    def _run_finished(self, fields: AgEvent) -> list[AgEvent]:
        self._state.ended = True
        return [
            {
                "type": "RUN_FINISHED",
                "threadId": self.thread_id,
                "runId": self.agui_run_id,
                **fields,
            }
        ]

    def _run_error(self, message: str, code: Any) -> list[AgEvent]:
        self._state.ended = True
        error: AgEvent = {"type": "RUN_ERROR", "message": message}
        if isinstance(code, str) and code:
            error["code"] = code
        return [*self._close(), error]

    def _custom(self, kind: str, data: dict[str, Any]) -> AgEvent:
        value = {k: v for k, v in data.items() if k != "run_id"}
        return {"type": "CUSTOM", "name": CUSTOM_PREFIX + kind, "value": value}

    def mark_ended(self) -> None:
        """The run had ended before the stream's cursor: the stream opens and closes."""
        self._state.ended = True

    def rebuild(self, items: Iterable[FeedEvent]) -> None:
        """Maps the run's events before a cursor again, for the state at it (discarded)."""
        for item in items:
            self.map(item)


# The run a stream follows, and the events that rebuild its state at a cursor.


@dataclass(frozen=True, slots=True)
class RunAt:
    """The run to follow from a cursor: `run_id` (None: the thread has had none), the
    position its events begin at (its MessagePosted), and whether it had ended."""

    run_id: str | None
    first: int
    ended: bool


def _feed_events(
    event_log: EventLog,
    keys: ContentKeys,
    conversation_id: UUID,
    *,
    after: int,
    up_to: int,
    topics: Sequence[str] = (),
) -> list[FeedEvent]:
    rows = event_log.read_rows(conversation_id, after=after, up_to=up_to, topics=topics)
    envelopes = stored_envelopes(rows, conversation_id, event_log.mapper)
    return [served_feed_event(item, keys) for item in envelopes]


def run_at(event_log: EventLog, keys: ContentKeys, conversation_id: UUID, position: int) -> RunAt:
    """The run active at `position` (posted, not ended by then; the earliest if others
    are queued behind it), else the latest run, ended."""
    posted: dict[str, int] = {}
    ended: set[str] = set()
    items = _feed_events(
        event_log,
        keys,
        conversation_id,
        after=0,
        up_to=position,
        topics=(*_RUN_TOPICS, *_INTERRUPTED),
    )
    for item in items:
        envelope = _decode(item.payload)
        data = envelope.data or {}
        run_id = str(data.get("run_id") or "")
        if envelope.type == "MessagePosted":
            posted.setdefault(run_id, envelope.position)
        elif envelope.type != "RunStarted" and not (
            envelope.type == "RunInterrupted" and data.get("retry")
        ):
            ended.add(run_id)
    if not posted:
        return RunAt(None, position + 1, ended=True)
    active = [(first, run_id) for run_id, first in posted.items() if run_id not in ended]
    if active:
        first, run_id = min(active)
        return RunAt(run_id, first, ended=False)
    first, run_id = max((first, run_id) for run_id, first in posted.items())
    return RunAt(run_id, first, ended=True)


def events_between(
    event_log: EventLog, keys: ContentKeys, conversation_id: UUID, after: int, up_to: int
) -> list[FeedEvent]:
    """The thread's stored events after `after`, up to `up_to`, as served."""
    if up_to <= after:
        return []
    return _feed_events(event_log, keys, conversation_id, after=after, up_to=up_to)


# MESSAGES_SNAPSHOT


def snapshot_messages(messages: Sequence[Message]) -> list[AgEvent]:
    """AG-UI messages of the message history's rows (content opened), oldest first: an
    assistant message with its run's tool calls is followed by their results."""
    out: list[AgEvent] = []
    for message in messages:
        content = message.content if isinstance(message.content, str) else ""
        if message.role != "assistant":
            out.append({"id": message.message_id, "role": "user", "content": content})
            continue
        assistant: AgEvent = {"id": message.message_id, "role": "assistant"}
        if content:
            assistant["content"] = content
        calls = message.tool_calls or []
        if calls:
            assistant["toolCalls"] = [
                {
                    "id": call.tool_call_id,
                    "type": "function",
                    "function": {
                        "name": call.tool_name,
                        "arguments": "" if call.args is None else _json_text(call.args),
                    },
                }
                for call in calls
            ]
        out.append(assistant)
        for call in calls:
            result: AgEvent = {
                "id": tool_result_id(call.tool_call_id),
                "role": "tool",
                "toolCallId": call.tool_call_id,
                "content": _json_text(call.error if call.error is not None else call.result),
            }
            if call.error is not None:
                result["error"] = _json_text(call.error)
            out.append(result)
    return out


def messages_snapshot(
    conversation_id: UUID, messages: Sequence[Message], *, oldest: int | None, more: bool
) -> AgEvent:
    """MESSAGES_SNAPSHOT of a window of the thread's messages (oldest first). With `more`,
    older ones are at `/v1/conversations/{id}/messages?order=desc&before=<oldest>`."""
    snapshot: AgEvent = {"type": "MESSAGES_SNAPSHOT", "messages": snapshot_messages(messages)}
    window: AgEvent = {"more": more}
    if oldest is not None:
        window["oldest"] = oldest
        if more:
            window["older"] = (
                f"/v1/conversations/{conversation_id}/messages?order=desc&before={oldest}"
            )
    snapshot["metadata"] = {"threadlog": {"window": window}}
    return snapshot
