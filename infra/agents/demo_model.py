"""The offline demo model: a sensible reply, streamed token by token, no network.

Given tools, it calls the calculator when the prompt holds arithmetic and current_time
when it asks for the time; given a structured output type, it answers with an object
of the schema's shape; asked to compact a conversation (infra/agents/compaction.py), it
answers with a deterministic summary (`demo_summary`).

It is a pydantic-ai `FunctionModel`, so runs go through the same agent code path
as a real provider.
"""

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from threadlog.infra.agents.compaction import COMPACTION_MARKER, USER_LINE

_TOKEN = re.compile(r"\S+\s*|\s+")
QUOTE_LIMIT = 160


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _last_prompt(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


def demo_reply(messages: list[ModelMessage]) -> str:
    prompt = " ".join(_last_prompt(messages).split())
    quoted = prompt if len(prompt) <= QUOTE_LIMIT else prompt[:QUOTE_LIMIT] + "…"
    turn = sum(1 for m in messages if isinstance(m, ModelRequest))
    words = len(prompt.split())
    return (
        f"You said: “{quoted}” ({words} word{'s' if words != 1 else ''}). "
        f"This is turn {turn} of our conversation. I am threadlog's offline demo model, "
        "so I can only reflect what you write; set THREADLOG_MODEL to a pydantic-ai model "
        "such as openai:gpt-4o-mini to talk to a real one."
    )


def demo_model(token_delay_seconds: float) -> FunctionModel:
    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        answer = demo_answer(messages, info)
        if isinstance(answer, str):
            for token in tokens(answer):
                if token_delay_seconds > 0:
                    await asyncio.sleep(token_delay_seconds)
                yield token
            return
        for index, call in enumerate(answer):
            yield {index: DeltaToolCall(call.tool_name, tool_call_id=call.tool_call_id)}
            for chunk in _json_chunks(call.args_as_json_str()):
                if token_delay_seconds > 0:
                    await asyncio.sleep(token_delay_seconds)
                yield {index: DeltaToolCall(json_args=chunk)}

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        answer = demo_answer(messages, info)
        return ModelResponse(parts=[TextPart(answer)] if isinstance(answer, str) else list(answer))

    return FunctionModel(respond, stream_function=stream, model_name="threadlog-demo")


def demo_answer(messages: list[ModelMessage], info: AgentInfo) -> str | list[ToolCallPart]:
    """Text, or tool calls: the tools the prompt asks for, then the structured output."""
    if (info.instructions or "").startswith(COMPACTION_MARKER):
        return demo_summary(_last_prompt(messages))
    tools = {tool.name for tool in info.function_tools}
    returns = _latest_tool_returns(messages)
    if tools and not returns:
        calls = _tool_calls(_last_prompt(messages), tools)
        if calls:
            return calls
    if info.output_tools and not info.allow_text_output:
        output = info.output_tools[0]
        sample = _sample(output.parameters_json_schema, _last_prompt(messages))
        return [ToolCallPart(output.name, sample, tool_call_id=_call_id())]
    if returns:
        return _tool_summary(returns)
    reply = demo_reply(messages)
    if tools:
        reply += " Ask me to calculate something like (2 + 3) * 7, or what time it is."
    return reply


_TOTAL = re.compile(r"(\d+) user messages? in all")
SUMMARY_QUOTES = 3
SUMMARY_QUOTE_LIMIT = 60


def demo_summary(transcript: str) -> str:
    """The demo model's summary of a compaction's transcript: how many user messages
    there were in all (counting those of the summary before) and the first words of the
    latest few. Deterministic, and bounded whatever the transcript's length."""
    lines = transcript.splitlines()
    users = [
        " ".join(line[len(USER_LINE) :].split()) for line in lines if line.startswith(USER_LINE)
    ]
    earlier = _TOTAL.search(transcript)
    total = len(users) + (int(earlier.group(1)) if earlier else 0)
    quotes = "; ".join(
        f"“{text[:SUMMARY_QUOTE_LIMIT]}{'…' if len(text) > SUMMARY_QUOTE_LIMIT else ''}”"
        for text in users[-SUMMARY_QUOTES:]
    )
    return (
        f"{total} user message{'s' if total != 1 else ''} in all so far; the latest began: "
        f"{quotes or '(none)'}. (threadlog's demo model summarizes no better.)"
    )


_ARITHMETIC = re.compile(r"[\d.\s()+\-*/%]+")
_OPERATOR = re.compile(r"\d\s*\)*\s*(\*\*|//|[-+*/%])\s*\(*\s*-?\d")
_ASKS_TIME = re.compile(r"\b(time|date|clock|today|now)\b", re.IGNORECASE)


def _expression(prompt: str) -> str | None:
    candidates = [m.strip() for m in _ARITHMETIC.findall(prompt) if _OPERATOR.search(m)]
    return max(candidates, key=len) if candidates else None


def _call_id() -> str:
    return f"demo-{uuid4().hex[:12]}"


def _tool_calls(prompt: str, tools: set[str]) -> list[ToolCallPart]:
    calls: list[ToolCallPart] = []
    expression = _expression(prompt)
    if expression and "calculator" in tools:
        calls.append(ToolCallPart("calculator", {"expression": expression}, _call_id()))
    if _ASKS_TIME.search(prompt) and "current_time" in tools:
        calls.append(ToolCallPart("current_time", {}, _call_id()))
    if calls and "report_progress" in tools:
        note = f"calling {', '.join(call.tool_name for call in calls)}"
        calls.insert(0, ToolCallPart("report_progress", {"percent": 50, "note": note}, _call_id()))
    return calls


def _latest_tool_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    if not messages or not isinstance(messages[-1], ModelRequest):
        return []
    parts = messages[-1].parts
    if any(isinstance(part, UserPromptPart) for part in parts):
        return []  # a new prompt: earlier returns are history
    return [part for part in parts if isinstance(part, ToolReturnPart)]


def _tool_summary(returns: list[ToolReturnPart]) -> str:
    lines = []
    for part in returns:
        if part.tool_name == "report_progress":
            continue
        if part.outcome != "success":
            lines.append(
                f"{part.tool_name} failed: {part.model_response_str(wrap_if_error=False)}."
            )
        elif part.tool_name == "calculator":
            lines.append(f"The calculator says {part.content}.")
        elif part.tool_name == "current_time":
            lines.append(f"It is {part.content} (UTC).")
        else:
            lines.append(f"{part.tool_name} returned {part.content}.")
    return " ".join(lines) or "Done."


def _sample(schema: dict[str, Any], prompt: str) -> Any:
    """A value of the schema's shape, made from the prompt: the demo's structured output."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties", {})
        return {name: _sample(sub, prompt) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items")
        return [_sample(items, prompt)] if isinstance(items, dict) else []
    words = prompt.split()
    samples = {"string": " ".join(words)[:QUOTE_LIMIT], "integer": len(words)}
    samples |= {"number": float(len(words)), "boolean": True}
    return samples.get(kind) if isinstance(kind, str) else None


def _json_chunks(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
