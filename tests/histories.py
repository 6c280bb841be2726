"""Scripted conversation histories written through the domain, for projection tests.

A run here is what a run executor would record: a user message, the run it
starts, tool calls, and one ending, possibly after an interrupted attempt. Only
the domain's own methods are used, so every event is one the service could write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID, uuid4

from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import Cause

USER = Cause(actor="user:alice", correlation_id="req-1")
AGENT = Cause(actor="agent:assistant", correlation_id="req-1")
SYSTEM = Cause(actor="system", correlation_id="req-1")

Ending = Literal["completed", "failed", "cancelled", "interrupted", "running"]


@dataclass(frozen=True, kw_only=True)
class ToolUse:
    name: str
    args: Any = field(default_factory=dict)
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run:
    """How a scripted run goes; the numbers are what `RunCompleted` reports."""

    end: Ending = "completed"
    tools: Sequence[ToolUse] = ()
    reply: str = "ok"
    output: Any = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    duration_ms: float = 1.0
    time_to_first_token_ms: float | None = None
    lost_attempt: Sequence[ToolUse] | None = None
    """When set: a first attempt that made these calls was interrupted and retried."""


def start_conversation(
    service: ConversationService, *, owner: str = "anonymous", agent: str = "helper"
) -> UUID:
    return service.start_conversation(
        owner=owner, agent=agent, title="scripted", metadata={}, cause=USER
    ).value.id


def ask(
    service: ConversationService, conversation_id: UUID, question: str, run: Run = Run()
) -> str:
    """Posts `question` and plays its run as `run` says; returns the run id."""
    posted = service.post_message(
        conversation_id, content=question, client_message_id=None, model="scripted", cause=USER
    ).value
    live = service.get_conversation(conversation_id)
    run_id = posted.run_id
    if run.lost_attempt is not None:
        _use_tools(live, run_id, run.lost_attempt)
        live.interrupt_run(run_id=run_id, reason="worker lost", retry=True, cause=SYSTEM)
    _use_tools(live, run_id, run.tools)
    _end(live, run_id, run)
    service.save(live)
    return run_id


def _use_tools(live: Conversation, run_id: str, tools: Sequence[ToolUse]) -> None:
    for tool in tools:
        call_id = uuid4().hex
        live.start_tool_call(
            run_id=run_id, tool_call_id=call_id, tool_name=tool.name, args=tool.args, cause=AGENT
        )
        live.complete_tool_call(
            run_id=run_id,
            tool_call_id=call_id,
            tool_name=tool.name,
            result=tool.result,
            error=tool.error,
            cause=AGENT,
        )


def _end(live: Conversation, run_id: str, run: Run) -> None:
    if run.end == "completed":
        live.complete_message(
            run_id=run_id, content=run.reply, model_messages="[]", cause=AGENT, output=run.output
        )
        live.complete_run(
            run_id=run_id,
            usage={
                "input_tokens": run.input_tokens,
                "output_tokens": run.output_tokens,
                "requests": 1,
            },
            duration_ms=run.duration_ms,
            time_to_first_token_ms=run.time_to_first_token_ms,
            cost_usd=run.cost_usd,
            cause=AGENT,
        )
    elif run.end == "failed":
        live.fail_run(run_id=run_id, error="ModelError", message="model failed", cause=AGENT)
    elif run.end == "cancelled":
        live.cancel_run(run_id=run_id, reason="user", partial_content="", cause=USER)
    elif run.end == "interrupted":
        live.interrupt_run(run_id=run_id, reason="worker lost", retry=False, cause=SYSTEM)


def every_ending(service: ConversationService, conversation_id: UUID) -> None:
    """One run of each kind: tool calls and a price, no price, failed, retried then
    cancelled, interrupted, and one still running."""
    ask(
        service,
        conversation_id,
        "look it up",
        Run(
            tools=[
                ToolUse(name="search", args={"q": "x"}, result={"hits": 2}),
                ToolUse(name="search", args={"q": "y"}, error="timeout"),
                ToolUse(name="calc", args={"expr": "1+1"}, result=2),
            ],
            output={"answer": 2},
            input_tokens=10,
            output_tokens=5,
            cost_usd=0.25,
            duration_ms=100.0,
            time_to_first_token_ms=10.0,
        ),
    )
    ask(
        service,
        conversation_id,
        "no price",
        Run(input_tokens=3, output_tokens=2, duration_ms=300.0, time_to_first_token_ms=30.0),
    )
    ask(service, conversation_id, "fail", Run(end="failed"))
    ask(
        service,
        conversation_id,
        "retry",
        Run(end="cancelled", lost_attempt=[ToolUse(name="search", args={"attempt": 1})]),
    )
    ask(service, conversation_id, "lost", Run(end="interrupted"))
    ask(service, conversation_id, "still going", Run(end="running"))
