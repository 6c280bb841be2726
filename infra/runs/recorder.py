"""Turns a pydantic-ai run's stream into conversation events on the live aggregate.

Text deltas become TokenStreamed, tool calls ToolCallStarted / ToolCallCompleted,
a structured output's validated partial objects OutputPartial, and the
`report_progress` tool RunProgressReported.
"""

import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import ValidationError
from pydantic_ai.exceptions import ModelRetry, UnexpectedModelBehavior
from pydantic_ai.messages import (
    AgentStreamEvent,
    FinalResultEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
)
from pydantic_ai.models import StreamedResponse
from pydantic_ai.result import AgentStream
from pydantic_core import from_json, to_jsonable_python

from threadlog.domain.content import Seal
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import Cause


class LiveConversation(Protocol):
    """The run's live aggregate and how its new events get appended."""

    conversation: Conversation

    async def added(self) -> None: ...


def text_delta(event: AgentStreamEvent) -> tuple[int, str] | None:
    # The first text of a part arrives in PartStartEvent, not as a delta.
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return (event.index, event.part.content) if event.part.content else None
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return (event.index, event.delta.content_delta) if event.delta.content_delta else None
    return None


def model_events(stream: AgentStream[Any, Any]) -> AsyncIterator[AgentStreamEvent]:
    """The model's own events, read under pydantic-ai's `AgentStream`.

    `AgentStream` serializes every pull with two anyio locks, cancel scopes and its
    capability chain, for consumers that share one stream: about half of pydantic-ai's
    CPU per streamed token (measured 210 vs 110 us per event through a FunctionModel). A
    run is its stream's only consumer and sets no capabilities, usage limits or event handlers,
    so it reads the model's stream, whose final response is the one the graph records
    either way. Falls back to the `AgentStream` when pydantic-ai does not expose it.
    """
    raw = getattr(stream, "_raw_stream_response", None)
    if isinstance(raw, StreamedResponse):
        return aiter(raw)
    return aiter(stream)


def call_args(part: ToolCallPart) -> Any:
    """The call's arguments as an object; the raw text when it is not valid JSON."""
    if part.args is None or part.args == "":
        return {}
    if isinstance(part.args, dict):
        return to_jsonable_python(part.args)
    try:
        return from_json(part.args)
    except ValueError:
        return part.args


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=str)


class RunRecorder:
    def __init__(
        self,
        live: LiveConversation,
        run_id: str,
        cause: Cause,
        text: list[str],
        *,
        structured: bool,
        seal: Seal,
    ) -> None:
        self._live = live
        # Personal content is recorded sealed with the owner's key (domain/content.py).
        self._seal = seal
        self._run_id = run_id
        self._cause = cause
        self._text = text
        self._structured = structured
        self._last_partial: Any = None
        # When the first text or partial output arrived.
        self.first_token: float | None = None

    async def model_event(self, event: AgentStreamEvent, stream: AgentStream[Any, Any]) -> None:
        conversation = self._live.conversation
        delta = text_delta(event)
        if delta is not None:
            self.first_token = self.first_token or time.perf_counter()
            part, chunk = delta
            self._text.append(chunk)
            conversation.stream_token(
                run_id=self._run_id, part=part, delta=self._seal(chunk), cause=self._cause
            )
            await self._live.added()
        elif self._structured and isinstance(
            event, (PartStartEvent, PartDeltaEvent, FinalResultEvent)
        ):
            await self._partial(stream)

    async def _partial(self, stream: AgentStream[Any, Any]) -> None:
        """Records the output so far when it validates as a partial object and changed."""
        try:
            partial = await stream.validate_response_output(stream.response, allow_partial=True)
        except (ValidationError, ModelRetry, UnexpectedModelBehavior):
            return  # no output yet (not the output tool's part), or not valid so far
        output = _jsonable(partial)
        if output == self._last_partial or output in (None, {}):
            return
        self._last_partial = output
        self.first_token = self.first_token or time.perf_counter()
        self._live.conversation.report_output_partial(
            run_id=self._run_id, output=self._seal(output), cause=self._cause
        )
        await self._live.added()

    async def tool_event(self, event: AgentStreamEvent) -> None:
        conversation = self._live.conversation
        if isinstance(event, FunctionToolCallEvent):
            conversation.start_tool_call(
                run_id=self._run_id,
                tool_call_id=event.part.tool_call_id,
                tool_name=event.part.tool_name,
                args=self._seal(call_args(event.part)),
                cause=self._cause,
            )
        elif isinstance(event, FunctionToolResultEvent):
            returned = event.part
            failed = returned.outcome != "success"
            conversation.complete_tool_call(
                run_id=self._run_id,
                tool_call_id=returned.tool_call_id,
                tool_name=returned.tool_name,
                result=None if failed else self._seal(_jsonable(returned.content)),
                error=self._seal(returned.model_response_str(wrap_if_error=False))
                if failed
                else None,
                cause=self._cause,
            )
        else:
            return
        await self._live.added()

    async def progress(self, percent: float, note: str) -> None:
        """The `report_progress` tool: recorded on the run's live aggregate."""
        self._live.conversation.report_progress(
            run_id=self._run_id, percent=percent, note=self._seal(note), cause=self._cause
        )
        await self._live.added()
