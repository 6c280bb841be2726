"""The run executor: a pydantic-ai agent's run, every step an event.

The live aggregate stays in memory for the whole run (reloading a long stream per
flush would cost more than the flush). Token events are appended in batches
(infra/runs/flusher.py).
"""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import structlog
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelConnectionError, ModelHTTPError, UnexpectedModelBehavior
from pydantic_ai.usage import RunUsage
from pydantic_core import to_jsonable_python

from threadlog.domain.application import ConversationService
from threadlog.domain.content import Seal
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import (
    Cause,
)
from threadlog.infra import metrics, tracing
from threadlog.infra.agents.catalog import AgentCatalog, AgentUnrunnable
from threadlog.infra.agents.registry import RegisteredAgent
from threadlog.infra.agents.tools import RunDeps
from threadlog.infra.runs.flusher import Flusher, FlushPolicy, FlushTick
from threadlog.infra.runs.history import CompactionPolicy, ContentErased, Histories, Prepared
from threadlog.infra.runs.recorder import RunRecorder, model_events
from threadlog.infra.store.content import ContentKeys
from threadlog.infra.store.eventstore import EventLog, while_store_recovers
from threadlog.infra.store.writer import STORE_OUTAGE_SECONDS, GroupCommit

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    conversation_id: UUID
    run_id: str
    message_id: str
    correlation_id: str


class UnknownAgent(LookupError):
    """The conversation names an agent this server does not define (any more)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True, slots=True)
class _Run:
    """What a run's streaming needs: its live aggregate's flusher, and the owner's seal."""

    flusher: Flusher
    request: RunRequest
    cause: Cause
    seal: Seal


def safe_failure(error: BaseException) -> tuple[str, str]:
    """An error code and a message that are safe to show to the conversation's users."""
    if isinstance(error, ModelHTTPError):
        return (
            "model_error",
            f"The model provider answered with an error (HTTP {error.status_code}).",
        )
    if isinstance(error, UnknownAgent):
        return "unknown_agent", f"The conversation's agent {error.name!r} is not configured."
    if isinstance(error, AgentUnrunnable):
        return "agent_unrunnable", "The agent's model could not be set up."
    if isinstance(error, ContentErased):
        return "content_erased", "The message was erased before the run could read it."
    if isinstance(error, UnexpectedModelBehavior):
        return "model_error", "The model returned a response threadlog could not use."
    if isinstance(error, (ModelConnectionError, ConnectionError, TimeoutError, OSError)):
        return "model_unavailable", "The model provider could not be reached."
    return "run_error", "The run failed because of an internal error."


def usage_of(usage: RunUsage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "requests": usage.requests,
    }


_RunEnd = Callable[[Conversation, str], None]

CANCEL_WAIT_SECONDS = 5.0
SERVER_STOPPED = "server stopped"


def _failure_end(cause: Cause, error: str, message: str) -> _RunEnd:
    def end(conversation: Conversation, run_id: str) -> None:
        conversation.fail_run(run_id=run_id, error=error, message=message, cause=cause)

    return end


def _interrupted_end(cause: Cause) -> _RunEnd:
    """The process stopped under the run: RunInterrupted, not retried here (a worker's
    lost run is retried by the worker that finds it; infra/runs/worker.py)."""

    def end(conversation: Conversation, run_id: str) -> None:
        conversation.interrupt_run(run_id=run_id, reason=SERVER_STOPPED, retry=False, cause=cause)

    return end


def _cancel_end(cause: Cause, partial: str) -> _RunEnd:
    def end(conversation: Conversation, run_id: str) -> None:
        conversation.cancel_run(
            run_id=run_id, reason="requested", partial_content=partial, cause=cause
        )

    return end


class RunExecutor:
    def __init__(
        self,
        service: ConversationService,
        event_log: EventLog,
        writer: GroupCommit,
        agents: AgentCatalog,
        *,
        policy: FlushPolicy,
        snapshot_interval: int,
        content: ContentKeys,
        compaction: CompactionPolicy | None = None,
    ) -> None:
        self._service = service
        self._histories = Histories(event_log, content, compaction or CompactionPolicy())
        self._content = content
        self._log = event_log
        self._writer = writer
        self._agents = agents
        self._policy = policy
        self._tick = FlushTick(policy.interval_seconds)
        self._snapshot_interval = snapshot_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._requests: dict[str, RunRequest] = {}
        self._cancel_requests: dict[str, Cause] = {}
        self._attempts: dict[str, int] = {}  # run id -> the attempt this process executes
        # Where the next queued run goes when one ends: here, or a worker queue (workers).
        self.dispatch: Callable[[RunRequest], Awaitable[None]] = self._start_here

    def is_running(self, run_id: str) -> bool:
        return run_id in self._tasks

    def conversation_of(self, run_id: str) -> UUID | None:
        """The conversation of a run this process runs (None when it runs no such run)."""
        request = self._requests.get(run_id)
        return request.conversation_id if request is not None else None

    async def wait(self, run_id: str, seconds: float) -> None:
        """Waits, at most `seconds`, for a run of this process to end."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task}, timeout=seconds)

    async def cancel(self, run_id: str, cause: Cause) -> bool:
        """Stops a run of this process; it records RunCancelled. False if it is not here."""
        task = self._tasks.get(run_id)
        if task is None:
            return False
        self._cancel_requests.setdefault(run_id, cause)
        task.cancel()
        # Bounded: the answer should not hang on a model that ignores cancellation.
        await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
        return True

    def start(self, request: RunRequest) -> None:
        task = asyncio.create_task(self._run(request), name=f"run-{request.run_id}")
        self._tasks[request.run_id] = task
        self._requests[request.run_id] = request

        def forget(_: object) -> None:
            self._tasks.pop(request.run_id, None)
            self._requests.pop(request.run_id, None)
            self._attempts.pop(request.run_id, None)

        task.add_done_callback(forget)

    async def _start_here(self, request: RunRequest) -> None:
        self.start(request)

    async def stop(self) -> None:
        """Interrupts every run in flight; each records why it ended."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, request: RunRequest) -> None:
        # In the API process the run's span is the posting request's child (its task copied
        # the request's context); a worker's is a root, with the same correlation id.
        with tracing.span(
            "run",
            run_id=request.run_id,
            conversation_id=str(request.conversation_id),
            correlation_id=request.correlation_id,
        ):
            await self._execute(request)
        await self.start_next(request)

    async def start_next(self, ended: RunRequest) -> None:
        """A run that ended may have started the next queued one (the `enqueue` policy)."""
        conversation = await asyncio.to_thread(
            self._service.get_conversation, ended.conversation_id
        )
        run_id = conversation.active_run_id
        if run_id is None or run_id == ended.run_id or self.is_running(run_id):
            return
        await self.dispatch(
            RunRequest(
                conversation_id=ended.conversation_id,
                run_id=run_id,
                message_id=conversation.active_message_id,
                correlation_id=conversation.active_correlation_id,
            )
        )

    async def _execute(self, request: RunRequest) -> None:
        service = self._service
        cause = Cause(
            actor="agent", correlation_id=request.correlation_id, causation_id=request.run_id
        )
        try:
            conversation = await asyncio.to_thread(
                service.get_conversation, request.conversation_id
            )
        except asyncio.CancelledError:
            # Stopped before it began: record the ending on a freshly loaded aggregate.
            requested = self._cancel_requests.pop(request.run_id, None)
            end = _cancel_end(requested, "") if requested else _interrupted_end(cause)
            await asyncio.to_thread(self._end_reloaded, request, end)
            if requested is None:
                raise
            return
        if conversation.active_run_id != request.run_id:
            return
        first_version = conversation.version
        self._attempts[request.run_id] = conversation.active_attempt
        cause = Cause(
            actor=f"agent:{conversation.agent}",
            correlation_id=request.correlation_id,
            causation_id=request.run_id,
        )
        flusher = Flusher(conversation, service, self._writer, self._policy, self._tick)
        seal = service.seal_for(conversation.owner)
        bound = log.bind(run_id=request.run_id, conversation_id=str(request.conversation_id))
        text: list[str] = []
        metrics.RUNS_ACTIVE.inc()
        try:
            registered = await asyncio.to_thread(
                self._agents.runnable,
                conversation.agent,
                conversation.pin.agent_id,
                conversation.pin.agent_version,
            )
            if registered is None:
                raise UnknownAgent(conversation.agent)
            # The owner's key, fetched off the event loop before the first token needs it.
            await asyncio.to_thread(self._content.warm, conversation.owner)
            # Compacted first (HistoryCompacted) when over the agent's context budget.
            prepared = await self._histories.prepare(
                flusher, registered, request.run_id, request.message_id, cause, seal
            )
            run = _Run(flusher, request, cause, seal)
            await self._stream(run, registered, prepared, text)
            bound.info("run.completed", events=flusher.conversation.version - first_version)
            metrics.RUNS_COMPLETED.inc()
        except asyncio.CancelledError:
            requested = self._cancel_requests.pop(request.run_id, None)
            if requested is not None:
                partial = seal("".join(text))
                await self._finish(flusher, request, _cancel_end(requested, partial))
                bound.info("run.cancelled", events=flusher.conversation.version - first_version)
                metrics.RUNS_CANCELLED.inc()
                return
            await self._finish(flusher, request, _interrupted_end(cause))
            metrics.RUNS_INTERRUPTED.inc()
            raise
        except Exception as error:
            bound.warning("run.failed", error=repr(error))
            await self._finish(flusher, request, _failure_end(cause, *safe_failure(error)))
            metrics.RUNS_FAILED.inc()
        finally:
            metrics.RUNS_ACTIVE.dec()
        conversation = flusher.conversation
        if conversation.pending_events:
            return  # its ending was recorded on a reloaded copy (`_end_reloaded`)
        service.remember(conversation)
        if (
            conversation.version // self._snapshot_interval
            > first_version // self._snapshot_interval
        ):
            await asyncio.to_thread(service.snapshot, conversation)

    async def _stream(
        self,
        run_of: "_Run",
        registered: RegisteredAgent,
        prepared: Prepared,
        text: list[str],
    ) -> None:
        flusher, request, cause, seal = run_of.flusher, run_of.request, run_of.cause, run_of.seal
        started = time.perf_counter()
        recorder = RunRecorder(
            flusher,
            request.run_id,
            cause,
            text,
            structured=registered.spec.output_schema is not None,
            seal=seal,
        )
        agent = registered.agent
        async with agent.iter(
            prepared.prompt,
            message_history=prepared.history,
            deps=RunDeps(report_progress=recorder.progress),
        ) as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    asked = time.perf_counter()
                    async with node.stream(run.ctx) as model_stream:
                        async for event in model_events(model_stream):
                            await recorder.model_event(event, model_stream)
                    metrics.MODEL_REQUEST.observe(time.perf_counter() - asked)
                elif Agent.is_call_tools_node(node):
                    async with node.stream(run.ctx) as tool_events:
                        async for tool_event in tool_events:
                            await recorder.tool_event(tool_event)
            result = run.result
        if result is None:
            raise UnexpectedModelBehavior("the run ended without a result")
        output = to_jsonable_python(result.output)
        conversation = flusher.conversation
        conversation.complete_message(
            run_id=request.run_id,
            content=seal(
                output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
            ),
            model_messages=seal(result.new_messages_json().decode()),
            output=None if isinstance(output, str) else seal(output),
            cause=cause,
        )
        finished = time.perf_counter()
        first_token = recorder.first_token
        if first_token is not None:
            metrics.MODEL_FIRST_TOKEN.observe(first_token - started)
        usage = result.usage + prepared.usage  # the compaction's summary request included
        conversation.complete_run(
            run_id=request.run_id,
            usage=usage_of(usage),
            cost_usd=registered.cost_usd(usage),
            duration_ms=round((finished - started) * 1000, 3),
            time_to_first_token_ms=(
                round((first_token - started) * 1000, 3) if first_token is not None else None
            ),
            cause=cause,
        )
        await flusher.flush()

    async def _finish(self, flusher: Flusher, request: RunRequest, end: _RunEnd) -> None:
        """Records the run's ending after what it streamed (the partial reply stays)."""
        try:
            await flusher.flush()
            end(flusher.conversation, request.run_id)
            await flusher.flush()
        except Exception as error:
            log.warning("run.end_on_reloaded", error=repr(error), run_id=request.run_id)
            await asyncio.to_thread(self._end_reloaded, request, end)

    def _end_reloaded(self, request: RunRequest, end: "_RunEnd") -> None:
        """The live aggregate is out of step with the store: record the ending on a fresh one."""

        def record() -> None:
            fresh = self._service.get_conversation(request.conversation_id)
            attempt = self._attempts.get(request.run_id, fresh.active_attempt)
            if fresh.active_run_id == request.run_id and fresh.active_attempt == attempt:
                end(fresh, request.run_id)
                self._service.save(fresh)

        try:
            # An ending not recorded leaves the run active for good: outlast a restart.
            while_store_recovers(record, seconds=STORE_OUTAGE_SECONDS, what="run_ending")
        except Exception as store_error:
            log.error("run.ending_not_recorded", error=repr(store_error), run_id=request.run_id)
