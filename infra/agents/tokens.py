"""Counting the tokens of a run's history, to keep it within its agent's context budget.

OpenAI models are counted with their own tokenizer, tiktoken (a dependency of
pydantic-ai's OpenAI support), when its encoding is at hand: tiktoken downloads each
encoding once into `TIKTOKEN_CACHE_DIR` (or the temporary directory), so a server with
no way out to the internet, and no encoding put there beforehand, cannot load it.
Every other model, and an OpenAI model whose encoding will not load, is counted with
the estimate: UTF-8 bytes / 3, rounded up. Measured against the real encodings on
English prose, Python, JSON, German, Chinese and the demo model's replies, it gives
1.25-1.58x the `o200k_base` count (GPT-4o and later) and 0.97-1.57x the `cl100k_base`
count (GPT-4, GPT-3.5): it errs on the side of compacting early.

Each message adds `MESSAGE_OVERHEAD` tokens (the chat format's role and separators);
tool definitions and images are not counted: leave room for them in the budget.
"""

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import structlog
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

log = structlog.get_logger(__name__)

MESSAGE_OVERHEAD = 4
"""Tokens each message costs beyond its text (OpenAI's chat format: about 3-4)."""

NON_TEXT_CONTENT = 85
"""What an image or other non-text prompt content counts as (OpenAI's low-detail image)."""

OPENAI_PREFIXES = ("openai:", "openai-chat:", "openai-responses:", "azure:")
DEFAULT_OPENAI_ENCODING = "o200k_base"
LOAD_SECONDS = 10.0
"""How long loading (maybe downloading) a tiktoken encoding may take before the estimate
is used instead."""


class TokenCounter(Protocol):
    @property
    def name(self) -> str:
        """What counted: `estimate`, or `tiktoken:<encoding>`; recorded in HistoryCompacted."""
        ...

    def count(self, text: str) -> int: ...


@dataclass(frozen=True)
class Estimate:
    """UTF-8 bytes / 3, rounded up (the module's docstring says how it compares)."""

    name: str = "estimate"

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 3)


class Encoding(Protocol):
    """What threadlog uses of a tiktoken `Encoding`."""

    @property
    def name(self) -> str: ...

    def encode(self, text: str, *, disallowed_special: Any = ...) -> list[int]: ...


@dataclass(frozen=True)
class Tiktoken:
    encoding: Encoding

    @property
    def name(self) -> str:
        return f"tiktoken:{self.encoding.name}"

    def count(self, text: str) -> int:
        # Text that looks like a special token is counted as text, not refused.
        return len(self.encoding.encode(text, disallowed_special=()))


ESTIMATE = Estimate()

Loader = Callable[[str], Encoding]


def _tiktoken_encoding(name: str) -> Encoding:
    import tiktoken

    return tiktoken.get_encoding(name)


def _encoding_name(model_name: str) -> str:
    try:
        import tiktoken.model

        return tiktoken.model.encoding_name_for_model(model_name)
    except (ImportError, KeyError):
        return DEFAULT_OPENAI_ENCODING


def counter_for(model: str, *, tokenizer: str = "auto", load: Loader | None = None) -> TokenCounter:
    """The counter of a model string (`openai:gpt-4o-mini`, `demo` …)."""
    if tokenizer == "estimate" or not model.startswith(OPENAI_PREFIXES):
        return ESTIMATE
    encoding_name = _encoding_name(model.partition(":")[2])
    if load is not None:
        return _loaded(encoding_name, load)
    return _cached_counter(encoding_name)


@cache
def _cached_counter(encoding_name: str) -> TokenCounter:
    """Loaded once per process; an encoding that would not load is not tried again."""
    return _loaded(encoding_name, _tiktoken_encoding)


def _loaded(encoding_name: str, load: Loader) -> TokenCounter:
    """The encoding's counter, or the estimate when it does not load within LOAD_SECONDS
    (tiktoken's download has no timeout of its own: a daemon thread waits for it)."""
    result: list[Encoding | BaseException] = []

    def run() -> None:
        try:
            result.append(load(encoding_name))
        except BaseException as error:
            result.append(error)

    thread = threading.Thread(target=run, name=f"tiktoken-{encoding_name}", daemon=True)
    thread.start()
    thread.join(LOAD_SECONDS)
    outcome = result[0] if result else TimeoutError(f"not loaded in {LOAD_SECONDS} s")
    if isinstance(outcome, BaseException):
        log.warning(
            "tokens.estimated",
            encoding=encoding_name,
            reason=f"{type(outcome).__name__}: {outcome}"[:300],
        )
        return ESTIMATE
    return Tiktoken(outcome)


def part_texts(message: ModelMessage) -> Iterable[str]:
    """The text a message sends to the model, part by part."""
    if isinstance(message, ModelRequest):
        for part in message.parts:
            if isinstance(part, (UserPromptPart, SystemPromptPart)):
                if isinstance(part.content, str):
                    yield part.content
                else:
                    for item in part.content:
                        yield item if isinstance(item, str) else ""
            elif isinstance(part, ToolReturnPart):
                yield part.tool_name
                yield part.model_response_str()
            elif isinstance(part, RetryPromptPart):
                yield part.model_response()
    elif isinstance(message, ModelResponse):
        for reply_part in message.parts:
            if isinstance(reply_part, (TextPart, ThinkingPart)):
                yield reply_part.content
            elif isinstance(reply_part, ToolCallPart):
                yield reply_part.tool_name
                yield reply_part.args_as_json_str()


def _non_text_items(message: ModelMessage) -> int:
    if not isinstance(message, ModelRequest):
        return 0
    return sum(
        1
        for part in message.parts
        if isinstance(part, UserPromptPart) and not isinstance(part.content, str)
        for item in part.content
        if not isinstance(item, str)
    )


def count_messages(counter: TokenCounter, messages: Iterable[ModelMessage]) -> int:
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD + NON_TEXT_CONTENT * _non_text_items(message)
        total += sum(counter.count(text) for text in part_texts(message) if text)
    return total


def truncate(counter: TokenCounter, text: str, limit: int) -> str:
    """`text` cut (at a word where it can) so that it counts at most `limit` tokens."""
    if counter.count(text) <= limit:
        return text
    cut = text
    while cut and counter.count(cut + "…") > limit:
        keep = max(0, min(len(cut) - 1, int(len(cut) * limit / max(1, counter.count(cut))) - 1))
        cut = cut[:keep]
        space = cut.rfind(" ")
        if space > len(cut) // 2:
            cut = cut[:space]
    return cut + "…" if cut else ""
