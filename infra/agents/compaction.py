"""Compaction you can see: when a run's history outgrows its agent's context budget,
older turns are replaced by a summary written by the agent's own model.

A *turn* is a user message and its run's reply (tool calls and returns included), so a
cut never separates a tool call from its result. The plan keeps the newest turns that
fit in the tail's share of the budget (and in what the instructions, the prompt and the
summary leave), and folds the rest, with the previous summary, into a new summary. The
run records it as `HistoryCompacted` (infra/runs/history.py); later runs send that
summary and the turns after it until they in turn grow over the budget.

Bounds: after a compaction the history counts at most
`instructions + prompt + summary_limit + MESSAGE_OVERHEAD + kept turns` with the kept
turns at most `min(tail_ratio * budget, budget - instructions - prompt - summary_limit)`:
within the budget whenever the instructions, the prompt and the summary fit in it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RunUsage

from threadlog.infra.agents.tokens import MESSAGE_OVERHEAD, TokenCounter, count_messages, truncate

COMPACTION_MARKER = "[threadlog compaction]"
COMPACTION_INSTRUCTIONS = (
    f"{COMPACTION_MARKER} You summarize a conversation between a user and an AI assistant "
    "for the assistant, who will carry on the conversation from your summary and the "
    "newest messages only. Keep what it needs to go on: the user's goals, preferences "
    "and constraints, facts, names and numbers, decisions taken, tool results that "
    "matter, and open questions. Write in the conversation's language, in plain prose or "
    "short lists, with no preamble."
)
SUMMARY_HEADING = "Summary of the earlier conversation (threadlog compacted it):"
USER_LINE = "User: "


@dataclass(frozen=True, kw_only=True)
class Turn:
    position: int
    """Its user message's position."""
    last_position: int
    """Its last message event's position: the reply's, or the user message's."""
    messages: list[ModelMessage]


@dataclass(frozen=True, kw_only=True)
class History:
    """A run's prompt and what comes before it, as the latest compaction left it."""

    prompt: str
    prompt_position: int
    summary: str | None
    """The latest compaction's summary (None: none since the history began)."""
    turns: list[Turn]
    """The turns after the latest compaction, oldest first."""

    def model_messages(self) -> list[ModelMessage]:
        head = [summary_message(self.summary)] if self.summary is not None else []
        return head + [message for turn in self.turns for message in turn.messages]


@dataclass(frozen=True, kw_only=True)
class Budget:
    tokens: int
    """0: never compact."""
    tail_ratio: float = 0.5
    summary_tokens: int = 1024

    @property
    def summary_limit(self) -> int:
        return max(1, min(self.summary_tokens, self.tokens // 4))


@dataclass(frozen=True, kw_only=True)
class Plan:
    folded: list[Turn]
    kept: list[Turn]
    up_to_position: int
    tokens_before: int
    fixed_tokens: int
    """The instructions' and the prompt's."""
    kept_tokens: int
    summary_limit: int


def summary_message(summary: str) -> ModelRequest:
    return ModelRequest(parts=[UserPromptPart(f"{SUMMARY_HEADING}\n{summary}")])


def prompt_message(prompt: str) -> ModelRequest:
    return ModelRequest(parts=[UserPromptPart(prompt)])


def history_tokens(counter: TokenCounter, instructions: str, history: History) -> int:
    """What the history sent with the prompt counts, instructions included."""
    return (
        counter.count(instructions)
        + count_messages(counter, [prompt_message(history.prompt)])
        + count_messages(counter, history.model_messages())
    )


def plan(counter: TokenCounter, instructions: str, history: History, budget: Budget) -> Plan | None:
    """What to fold into a new summary, or None when the history is within the budget
    (or nothing can be folded: no turn before the prompt)."""
    if budget.tokens <= 0:
        return None
    fixed = counter.count(instructions) + count_messages(counter, [prompt_message(history.prompt)])
    turn_tokens = [count_messages(counter, turn.messages) for turn in history.turns]
    summary_tokens = (
        count_messages(counter, [summary_message(history.summary)])
        if history.summary is not None
        else 0
    )
    before = fixed + summary_tokens + sum(turn_tokens)
    if before <= budget.tokens:
        return None
    limit = budget.summary_limit
    allowance = min(
        int(budget.tokens * budget.tail_ratio),
        budget.tokens - fixed - limit - MESSAGE_OVERHEAD - counter.count(SUMMARY_HEADING),
    )
    first_kept, kept_tokens = len(history.turns), 0
    while first_kept > 0 and kept_tokens + turn_tokens[first_kept - 1] <= allowance:
        first_kept -= 1
        kept_tokens += turn_tokens[first_kept]
    folded, kept = history.turns[:first_kept], history.turns[first_kept:]
    if not folded:
        return None
    # Every turn whose user message is at or before it is folded, and no other.
    next_position = kept[0].position if kept else history.prompt_position
    up_to = min(max(turn.last_position for turn in folded), next_position - 1)
    return Plan(
        folded=folded,
        kept=kept,
        up_to_position=up_to,
        tokens_before=before,
        fixed_tokens=fixed,
        kept_tokens=kept_tokens,
        summary_limit=limit,
    )


def transcript(previous_summary: str | None, turns: Sequence[Turn]) -> str:
    """The folded turns (and the summary before them) as text for the summarizer."""
    lines: list[str] = []
    if previous_summary is not None:
        lines += ["Summary so far:", previous_summary, ""]
    lines.append("Conversation:")
    for turn in turns:
        for message in turn.messages:
            lines.extend(_lines(message))
    return "\n".join(lines)


def _lines(message: ModelMessage) -> list[str]:
    lines: list[str] = []
    if isinstance(message, ModelRequest):
        for part in message.parts:
            if isinstance(part, UserPromptPart):
                text = part.content if isinstance(part.content, str) else _texts(part.content)
                lines.append(f"{USER_LINE}{text}")
            elif isinstance(part, ToolReturnPart):
                lines.append(f"Tool {part.tool_name} returned: {part.model_response_str()}")
    elif isinstance(message, ModelResponse):
        for reply_part in message.parts:
            if isinstance(reply_part, TextPart):
                lines.append(f"Assistant: {reply_part.content}")
            elif isinstance(reply_part, ToolCallPart):
                args = reply_part.args_as_json_str()
                lines.append(f"Assistant called {reply_part.tool_name} with {args}")
    return lines


def _texts(content: Sequence[Any]) -> str:
    return " ".join(item if isinstance(item, str) else "[attachment]" for item in content)


def summary_prompt(previous_summary: str | None, turns: Sequence[Turn], limit: int) -> str:
    words = max(10, int(limit * 0.6))
    return (
        f"Summarize the conversation below in at most {words} words.\n\n"
        f"{transcript(previous_summary, turns)}"
    )


async def summarize(
    model: Model | str,
    model_settings: dict[str, Any],
    counter: TokenCounter,
    prompt: str,
    limit: int,
) -> tuple[str, RunUsage]:
    """The model's summary, cut to `limit` tokens, and what asking for it used."""
    settings: dict[str, Any] = {**model_settings}
    settings["max_tokens"] = min(limit, int(settings.get("max_tokens") or limit))
    agent: Agent[None, str] = Agent(
        model, output_type=str, instructions=COMPACTION_INSTRUCTIONS, name="compaction"
    )
    # Streamed: every model threadlog runs streams (a test's model may do nothing else).
    async with agent.run_stream(prompt, model_settings=ModelSettings(**settings)) as result:  # type: ignore[typeddict-item]
        text = await result.get_output()
    return truncate(counter, text.strip(), limit), result.usage
