"""The paced model, for load benchmarks: T tokens at R tokens per second, each stamped.

`THREADLOG_MODEL=paced:R:T` (or an agent's `model = "paced:R:T"`) streams T tokens
at R per second on a fixed schedule. Token i reads `" i@<ns>"`, where `<ns>` is the
wall-clock time (`time.time_ns()`) at which it was due: a client on the same machine
subtracts it from its receipt time to get the model → client latency. The stamp is
the due time, not the moment the token left the model, so a server too busy to take
a token on time counts that wait too (as a real provider's tokens wait in a socket).

It is a pydantic-ai `FunctionModel` and never calls tools: runs go through the same
agent code path as a real provider's.
"""

import asyncio
import re
import time
from collections.abc import AsyncIterator

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

PREFIX = "paced:"
_SPEC = re.compile(r"^paced:(?P<rate>\d+(?:\.\d+)?):(?P<tokens>\d+)$")
_TOKEN = re.compile(r" (\d+)@(\d+)")
MAX_TOKENS = 1_000_000


class PacedSpecError(ValueError):
    """A `paced:` model string that does not read `paced:<tokens per second>:<tokens>`."""


def is_paced(model: str) -> bool:
    return model.startswith(PREFIX)


def parse_paced(model: str) -> tuple[float, int]:
    """(tokens per second, tokens) of `paced:R:T`."""
    match = _SPEC.match(model)
    if match is None:
        raise PacedSpecError(
            f"{model!r}: a paced model reads paced:<tokens per second>:<tokens>, e.g. paced:50:500"
        )
    rate, count = float(match["rate"]), int(match["tokens"])
    if rate <= 0 or not 1 <= count <= MAX_TOKENS:
        raise PacedSpecError(
            f"{model!r}: the rate must be positive and the tokens between 1 and {MAX_TOKENS:,}"
        )
    return rate, count


def paced_token(index: int, due_ns: int) -> str:
    return f" {index}@{due_ns}"


def read_token(text: str) -> tuple[int, int] | None:
    """(index, due time in ns) of a paced token, or None for other text."""
    match = _TOKEN.fullmatch(text)
    return (int(match[1]), int(match[2])) if match else None


def paced_model(tokens_per_second: float, tokens: int) -> FunctionModel:
    interval_ns = 1e9 / tokens_per_second

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        start_ns = time.time_ns()
        for index in range(tokens):
            due_ns = start_ns + round(index * interval_ns)
            wait_ns = due_ns - time.time_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            yield paced_token(index, due_ns)

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        # Not streamed (`?wait=true` streams too; this serves pydantic-ai's non-streaming path).
        now = time.time_ns()
        return ModelResponse(parts=[TextPart("".join(paced_token(i, now) for i in range(tokens)))])

    return FunctionModel(
        respond, stream_function=stream, model_name=f"{PREFIX}{tokens_per_second:g}:{tokens}"
    )
