"""A run's history, rebuilt from the conversation's events and kept within its agent's
context budget.

The history is every turn (a user message and its run's reply, as pydantic-ai's
messages) before the run's own message, since the latest `HistoryCleared`. After a
`HistoryCompacted` the turns it folded (those whose user message is at or before its
`up_to_position`) are replaced by its summary. When that still counts more tokens than
the agent's budget, the run first asks its model for a new summary and records it as
`HistoryCompacted` (infra/agents/compaction.py), then sends summary + recent turns.
Content is opened only for the turns after the latest compaction.
"""

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

import structlog
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    UserPromptPart,
)
from pydantic_ai.usage import RunUsage

from threadlog.domain.content import Seal
from threadlog.domain.events import (
    Cause,
    HistoryCleared,
    HistoryCompacted,
    MessageCompleted,
    MessagePosted,
)
from threadlog.infra.agents.compaction import (
    Budget,
    History,
    Turn,
    plan,
    summarize,
    summary_message,
    summary_prompt,
)
from threadlog.infra.agents.registry import RegisteredAgent
from threadlog.infra.agents.tokens import count_messages, counter_for
from threadlog.infra.runs.flusher import Flusher
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.eventstore import EventLog, topics_of

log = structlog.get_logger(__name__)


def warm_model_messages() -> None:
    """Builds pydantic-ai's serializer of model messages now. It is built on first use,
    which is a run's completion (`new_messages_json`): 30 to 50 ms of CPU on the event
    loop, every stream of the process held up meanwhile."""
    ModelMessagesTypeAdapter.dump_json([])


class ContentErased(LookupError):
    """The run's message was erased (its owner's keys destroyed) before the run began."""


@dataclass(frozen=True, kw_only=True)
class CompactionPolicy:
    """The settings' part of every agent's budget (the agent gives the tokens)."""

    tail_ratio: float = 0.5
    summary_tokens: int = 1024
    tokenizer: str = "auto"


@dataclass
class _Turn:
    posted: MessagePosted
    reply: MessageCompleted | None = None


@dataclass
class _Read:
    prompt: MessagePosted | None = None
    compaction: HistoryCompacted | None = None
    turns: list[_Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    """What a run sends its model: the prompt, the history before it, and what preparing
    them cost (the summary request of a compaction: part of the run's usage and cost)."""

    prompt: str
    history: list[ModelMessage]
    usage: RunUsage = field(default_factory=RunUsage)


class Histories:
    def __init__(self, event_log: EventLog, content: ContentKeys, policy: CompactionPolicy) -> None:
        self._log = event_log
        self._content = content
        self._policy = policy

    def read(self, conversation_id: UUID, message_id: str) -> History:
        """The prompt of the run of `message_id` and the history before it (blocking)."""
        logged = self._log.read(
            conversation_id,
            topics=topics_of(MessagePosted, MessageCompleted, HistoryCleared, HistoryCompacted),
        )
        read = _Read()
        by_run: dict[str, _Turn] = {}
        for item in logged:
            event = item.event
            if isinstance(event, HistoryCleared):
                if read.prompt is None:
                    read, by_run = _Read(), {}
            elif isinstance(event, HistoryCompacted):
                # One recorded after the prompt (an earlier attempt of this run, or a run
                # that ended while this message was queued) applies too.
                read.compaction = event
                read.turns = [
                    t for t in read.turns if t.posted.originator_version > event.up_to_position
                ]
            elif isinstance(event, MessageCompleted):
                turn = by_run.get(event.run_id)
                if turn is not None:
                    turn.reply = event
            elif isinstance(event, MessagePosted) and read.prompt is None:
                if event.message_id == message_id:
                    read.prompt = event
                else:
                    by_run[event.run_id] = turn = _Turn(event)
                    read.turns.append(turn)
        if read.prompt is None:
            raise LookupError(f"message {message_id} is not in the conversation")
        # A message is opened only when its own text is needed (None: erased).
        prompt = self._content.open(read.prompt.content).value
        if prompt is None:
            raise ContentErased(message_id)
        summary = (
            self._content.open(read.compaction.summary).value
            if read.compaction is not None
            else None
        )
        return History(
            prompt=prompt,
            prompt_position=read.prompt.originator_version,
            summary=summary if isinstance(summary, str) else None,
            turns=[self._opened(turn) for turn in read.turns],
        )

    def _opened(self, turn: _Turn) -> Turn:
        posted, reply = turn.posted, turn.reply
        messages: list[ModelMessage] = []
        model_messages = self._content.open(reply.model_messages).value if reply else None
        if model_messages:
            messages = list(ModelMessagesTypeAdapter.validate_json(model_messages))
        elif (content := self._content.open(posted.content).value) is not None:
            messages = [ModelRequest(parts=[UserPromptPart(content)])]
        return Turn(
            position=posted.originator_version,
            last_position=reply.originator_version if reply else posted.originator_version,
            messages=messages,
        )

    async def prepare(
        self,
        live: Flusher,
        registered: RegisteredAgent,
        run_id: str,
        message_id: str,
        cause: Cause,
        seal: Seal,
    ) -> Prepared:
        """The run's prompt and the history its model sees, compacted first (and
        `HistoryCompacted` stored) when it would exceed the agent's context budget."""
        conversation_id = live.conversation.id
        history = await asyncio.to_thread(self.read, conversation_id, message_id)
        spec = registered.spec
        budget = Budget(
            tokens=spec.context_budget or 0,
            tail_ratio=self._policy.tail_ratio,
            summary_tokens=self._policy.summary_tokens,
        )
        if budget.tokens <= 0:
            return Prepared(history.prompt, history.model_messages())
        counter = await asyncio.to_thread(
            counter_for, spec.model or registered.model_name, tokenizer=self._policy.tokenizer
        )
        instructions = spec.system_prompt
        planned = await asyncio.to_thread(plan, counter, instructions, history, budget)
        if planned is None:
            return Prepared(history.prompt, history.model_messages())
        prompt = summary_prompt(history.summary, planned.folded, planned.summary_limit)
        model = registered.agent.model
        if model is None:
            raise LookupError(f"agent {spec.name!r} has no model")
        summary, usage = await summarize(
            model,
            spec.model_settings,
            counter,
            prompt,
            planned.summary_limit,
        )
        compacted = History(
            prompt=history.prompt,
            prompt_position=history.prompt_position,
            summary=summary,
            turns=planned.kept,
        )
        tokens_after = (
            planned.fixed_tokens
            + count_messages(counter, [summary_message(summary)])
            + planned.kept_tokens
        )
        live.conversation.compact_history(
            run_id=run_id,
            up_to_position=planned.up_to_position,
            summary=seal(summary),
            tokens_before=planned.tokens_before,
            tokens_after=tokens_after,
            model=registered.model_name,
            tokenizer=counter.name,
            usage={
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "requests": usage.requests,
            },
            cause=cause,
        )
        await live.flush()
        log.info(
            "run.history_compacted",
            run_id=run_id,
            conversation_id=str(conversation_id),
            up_to_position=planned.up_to_position,
            tokens_before=planned.tokens_before,
            tokens_after=tokens_after,
            budget=budget.tokens,
        )
        return Prepared(history.prompt, compacted.model_messages(), usage)
