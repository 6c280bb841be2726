"""Token counting and the compaction plan (infra/agents/tokens.py, compaction.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import tiktoken
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from threadlog.domain.events import Cause
from threadlog.infra.agents import tokens
from threadlog.infra.agents.compaction import (
    Budget,
    History,
    Turn,
    history_tokens,
    plan,
    summary_prompt,
    transcript,
)
from threadlog.infra.agents.demo_model import demo_summary
from threadlog.infra.agents.registry import AgentRegistry, load_specs
from threadlog.infra.agents.tokens import (
    ESTIMATE,
    MESSAGE_OVERHEAD,
    count_messages,
    counter_for,
    truncate,
)
from threadlog.infra.settings import Settings, SettingsError

CAUSE = Cause(actor="agent:a", correlation_id="c")


def byte_encoding(name: str = "bytes") -> tiktoken.Encoding:
    """A real tiktoken encoding with one token per byte (no merges): offline."""
    return tiktoken.Encoding(
        name=name,
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )


def turn(position: int, prompt: str, reply: str, last: int | None = None) -> Turn:
    messages: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart(prompt)]),
        ModelResponse(parts=[TextPart(reply)]),
    ]
    return Turn(position=position, last_position=last or position + 2, messages=messages)


def test_the_estimate_is_utf8_bytes_over_three_rounded_up() -> None:
    assert ESTIMATE.count("") == 0
    assert ESTIMATE.count("abcd") == 2
    assert ESTIMATE.count("世界") == 2  # 6 bytes
    assert ESTIMATE.count("\ud800") == 1  # a lone surrogate is counted, not refused


def test_a_model_without_a_local_tokenizer_is_estimated() -> None:
    for model in ("demo", "anthropic:claude-sonnet-4-0", "paced:50:10", "scripted"):
        assert counter_for(model) is ESTIMATE


def test_tokenizer_estimate_estimates_even_openai_models() -> None:
    assert counter_for("openai:gpt-4o", tokenizer="estimate") is ESTIMATE


def test_an_openai_model_is_counted_with_its_tiktoken_encoding() -> None:
    asked: list[str] = []

    def load(name: str) -> tiktoken.Encoding:
        asked.append(name)
        return byte_encoding(name)

    counter = counter_for("openai:gpt-4o-mini", load=load)
    assert counter.name == "tiktoken:o200k_base" and asked == ["o200k_base"]
    assert counter.count("héllo <|endoftext|>") == len("héllo <|endoftext|>".encode())
    counter_for("openai-chat:gpt-4", load=load)
    counter_for("openai:some-future-model", load=load)
    assert asked[1:] == ["cl100k_base", "o200k_base"]


def test_an_encoding_that_does_not_load_falls_back_to_the_estimate() -> None:
    def offline(name: str) -> tiktoken.Encoding:
        raise ConnectionError("no route to the encoding's download")

    assert counter_for("openai:gpt-4o", load=offline) is ESTIMATE


def test_an_encoding_that_hangs_falls_back_to_the_estimate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tokens, "LOAD_SECONDS", 0.05)

    def hangs(name: str) -> tiktoken.Encoding:
        time.sleep(1)
        return byte_encoding(name)

    started = time.monotonic()
    assert counter_for("openai:gpt-4o", load=hangs) is ESTIMATE
    assert time.monotonic() - started < 0.5


def test_messages_count_their_text_tool_calls_and_returns_plus_an_overhead_each() -> None:
    messages: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("abcabc")]),
        ModelResponse(parts=[ToolCallPart("calc", {"x": 1}, "t1")]),
        ModelRequest(parts=[ToolReturnPart("calc", 3, "t1")]),
        ModelResponse(parts=[TextPart("abc")]),
    ]
    expected = 4 * MESSAGE_OVERHEAD + 2 + (2 + 3) + (2 + 1) + 1
    assert count_messages(ESTIMATE, messages) == expected


def test_truncate_keeps_a_text_within_its_limit() -> None:
    text = " ".join(f"word{i}" for i in range(300))
    cut = truncate(ESTIMATE, text, 50)
    assert ESTIMATE.count(cut) <= 50 and cut.endswith("…") and text.startswith(cut[:-1])
    assert truncate(ESTIMATE, "short", 50) == "short"


def history(turns: list[Turn], *, summary: str | None = None, prompt: str = "next?") -> History:
    position = (turns[-1].last_position if turns else 1) + 2
    return History(prompt=prompt, prompt_position=position, summary=summary, turns=turns)


def test_a_history_within_its_budget_is_not_compacted() -> None:
    small = history([turn(2, "hi", "hello")])
    assert plan(ESTIMATE, "be brief", small, Budget(tokens=1000)) is None


def test_a_budget_of_zero_never_compacts() -> None:
    large = history([turn(2 + 5 * i, "x" * 3000, "y" * 3000) for i in range(10)])
    assert plan(ESTIMATE, "", large, Budget(tokens=0)) is None


def test_an_over_budget_history_folds_its_oldest_turns_and_keeps_a_tail_within_its_share() -> None:
    turns = [turn(2 + 5 * i, f"question {i} " + "q" * 150, "a" * 300) for i in range(10)]
    over = history(turns)
    budget = Budget(tokens=800, tail_ratio=0.5, summary_tokens=100)
    planned = plan(ESTIMATE, "instructions", over, budget)
    assert planned is not None
    assert planned.tokens_before == history_tokens(ESTIMATE, "instructions", over) > 800
    assert planned.folded + planned.kept == turns and planned.folded and planned.kept
    assert planned.kept_tokens == count_messages(
        ESTIMATE, [m for t in planned.kept for m in t.messages]
    )
    assert planned.kept_tokens <= 400
    assert planned.up_to_position == planned.folded[-1].last_position
    bound = planned.fixed_tokens + planned.summary_limit + 40 + planned.kept_tokens
    assert bound <= budget.tokens


def test_the_cut_never_folds_a_user_message_the_tail_still_needs() -> None:
    # The second message was queued during the first run: its position comes before
    # the first run's reply.
    first = turn(2, "q" * 600, "a" * 600, last=9)
    second = turn(5, "short", "reply", last=14)
    planned = plan(ESTIMATE, "", history([first, second]), Budget(tokens=300))
    assert planned is not None and planned.folded == [first] and planned.kept == [second]
    assert planned.up_to_position == 4


def test_nothing_to_fold_is_no_plan() -> None:
    huge_prompt = history([], prompt="p" * 10_000)
    assert plan(ESTIMATE, "", huge_prompt, Budget(tokens=100)) is None


def test_the_summarizer_sees_the_previous_summary_and_the_folded_turns() -> None:
    folded = [
        Turn(
            position=2,
            last_position=6,
            messages=[
                ModelRequest(parts=[UserPromptPart("what is 2+3?")]),
                ModelResponse(parts=[ToolCallPart("calculator", {"expression": "2+3"}, "t")]),
                ModelRequest(parts=[ToolReturnPart("calculator", 5, "t")]),
                ModelResponse(parts=[TextPart("It is 5.")]),
            ],
        )
    ]
    text = transcript("Earlier: greetings.", folded)
    assert text.splitlines() == [
        "Summary so far:",
        "Earlier: greetings.",
        "",
        "Conversation:",
        "User: what is 2+3?",
        'Assistant called calculator with {"expression":"2+3"}',
        "Tool calculator returned: 5",
        "Assistant: It is 5.",
    ]
    assert summary_prompt(None, folded, 100).startswith("Summarize the conversation below in at")


def test_the_demo_summary_is_deterministic_bounded_and_carries_its_count_on() -> None:
    lines = "\n".join(f"User: message number {i} " + "w " * 200 for i in range(40))
    first = demo_summary(f"Conversation:\n{lines}")
    assert first == demo_summary(f"Conversation:\n{lines}")
    assert first.startswith("40 user messages in all so far; the latest began: “message number 37")
    assert ESTIMATE.count(first) < 150
    again = demo_summary(f"Summary so far:\n{first}\n\nConversation:\nUser: one more")
    assert again.startswith("41 user messages in all so far; the latest began: “one more”")


def test_an_agent_has_the_default_budget_or_its_own(tmp_path: Path) -> None:
    agents_file = tmp_path / "agents.toml"
    agents_file.write_text(
        '[[agents]]\nname = "small"\ncontext_budget = 2000\n'
        '[[agents]]\nname = "unbounded"\ncontext_budget = 0\n'
    )
    settings = Settings(data_dir=tmp_path, context_budget=9000, agents_file=agents_file)
    registry = AgentRegistry.build(settings)
    budgets = {agent.spec.name: agent.spec.context_budget for agent in registry}
    assert budgets == {"assistant": 9000, "tools-demo": 9000, "small": 2000, "unbounded": 0}


def test_a_negative_agent_budget_is_refused(tmp_path: Path) -> None:
    agents_file = tmp_path / "agents.toml"
    agents_file.write_text('[[agents]]\nname = "bad"\ncontext_budget = -1\n')
    with pytest.raises(SettingsError, match="context_budget"):
        load_specs(agents_file)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONTEXT_BUDGET", "-5"),
        ("COMPACTION_TAIL_RATIO", "1"),
        ("COMPACTION_TAIL_RATIO", "0"),
        ("COMPACTION_SUMMARY_TOKENS", "0"),
        ("TOKENIZER", "bpe"),
    ],
)
def test_compaction_settings_out_of_range_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({f"THREADLOG_{name}": value})


def test_compaction_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "THREADLOG_CONTEXT_BUDGET": "3000",
            "THREADLOG_COMPACTION_TAIL_RATIO": "0.25",
            "THREADLOG_COMPACTION_SUMMARY_TOKENS": "200",
            "THREADLOG_TOKENIZER": "estimate",
        }
    )
    assert (settings.context_budget, settings.compaction_tail_ratio) == (3000, 0.25)
    assert (settings.compaction_summary_tokens, settings.tokenizer) == (200, "estimate")
