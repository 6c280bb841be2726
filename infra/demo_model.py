"""The offline demo model: a sensible reply, streamed token by token, no network.

It is a pydantic-ai `FunctionModel`, so runs go through the same agent code path
as a real provider.
"""

import asyncio
import re
from collections.abc import AsyncIterator

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

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
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for token in tokens(demo_reply(messages)):
            if token_delay_seconds > 0:
                await asyncio.sleep(token_delay_seconds)
            yield token

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(demo_reply(messages))])

    return FunctionModel(respond, stream_function=stream, model_name="threadlog-demo")
