"""Where runs execute: in this process (embedded), or in `threadlog worker` processes.

Scaled out (THREADLOG_WORKERS), a run is one message on a JetStream stream with
work-queue retention: the API publishes it, one worker takes it and acks it when
the run has ended (infra/runs/worker.py). Its Nats-Msg-Id is the run id, so publishing a
run twice (within RUN_DEDUP_WINDOW_SECONDS) queues it once.
"""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol
from uuid import UUID

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.runs.executor import RunExecutor, RunRequest
from threadlog.infra.stream.feed import ConversationFeed, FeedEvent, ends_run
from threadlog.infra.stream.nats import HEADER_MSG_ID, StreamNames, apply_stream_config

log = structlog.get_logger(__name__)

# A run queued twice within this window is queued once (a worker that lost its lease
# and woke up again may try to queue the conversation's next run a second time).
RUN_DEDUP_WINDOW_SECONDS = 600.0
NOT_QUEUED = ("run_not_queued", "The run could not be handed to a worker.")
# The feed's idle heartbeat while waiting for a remote run; only bounds the wake-ups.
WAIT_HEARTBEAT_SECONDS = 5.0


class RunTicket(msgspec.Struct, frozen=True):
    """A run waiting for a worker: enough to load everything else from the store."""

    conversation_id: UUID
    run_id: str
    message_id: str
    correlation_id: str


_ticket_decoder = msgspec.json.Decoder(RunTicket)


def encode_ticket(request: RunRequest) -> bytes:
    return msgspec.json.encode(
        RunTicket(
            conversation_id=request.conversation_id,
            run_id=request.run_id,
            message_id=request.message_id,
            correlation_id=request.correlation_id,
        )
    )


def decode_ticket(data: bytes) -> RunRequest:
    ticket = _ticket_decoder.decode(data)
    return RunRequest(
        conversation_id=ticket.conversation_id,
        run_id=ticket.run_id,
        message_id=ticket.message_id,
        correlation_id=ticket.correlation_id,
    )


async def ensure_run_queue(js: JetStreamContext, names: StreamNames) -> None:
    """Creates the work-queue stream, or brings an existing one's settings up to date."""
    config = StreamConfig(
        name=names.run_queue_stream,
        subjects=[names.run_queue_subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=RUN_DEDUP_WINDOW_SECONDS,
        num_replicas=names.replicas,
    )
    await apply_stream_config(js, config)


class RunQueueUnavailable(ConnectionError):
    """NATS is unreachable: a run posted now could not be handed to a worker."""


class Runs(Protocol):
    """Starts runs and waits for them, wherever they execute."""

    def check_available(self) -> None:
        """Raises RunQueueUnavailable when a run could not be started now."""
        ...

    async def dispatch(self, request: RunRequest) -> None: ...

    async def wait(self, conversation_id: UUID, run_id: str, *, after: int, seconds: float) -> None:
        """Waits, at most `seconds`, for the run to end (its events after `after`)."""
        ...


class LocalRuns:
    """The embedded mode: runs execute in this process."""

    def __init__(self, executor: RunExecutor) -> None:
        self._executor = executor

    def check_available(self) -> None:
        """Always: runs execute here (without NATS, their events reach live streams late)."""

    async def dispatch(self, request: RunRequest) -> None:
        self._executor.start(request)

    async def wait(self, conversation_id: UUID, run_id: str, *, after: int, seconds: float) -> None:
        await self._executor.wait(run_id, seconds)


class QueuedRuns:
    """Scaled out: runs go to the work queue; their events come back through the feed."""

    def __init__(
        self,
        js: JetStreamContext,
        names: StreamNames,
        service: ConversationService,
        feed: ConversationFeed,
        *,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._connected = connected
        self._js = js
        self._names = names
        self._service = service
        self._feed = feed

    def check_available(self) -> None:
        # Checked before the message is stored: a 503 the client retries beats a stored
        # message whose run fails with run_not_queued after the publish times out.
        if not self._connected():
            raise RunQueueUnavailable("NATS is not connected")

    async def dispatch(self, request: RunRequest, *, msg_id: str | None = None) -> None:
        """`msg_id`: the ticket's Nats-Msg-Id (default the run id; a run queued again
        after its ticket was lost needs another, infra/runs/unqueued.py)."""
        try:
            await self._js.publish(
                self._names.run_queue_subject,
                encode_ticket(request),
                stream=self._names.run_queue_stream,
                headers={HEADER_MSG_ID: msg_id or request.run_id},
            )
        except nats.errors.Error as error:
            # No worker will ever see this run: it fails (an event the client sees, like
            # any run's failure), so the conversation takes its next message.
            log.error("runs.not_queued", run_id=request.run_id, error=repr(error))
            cause = Cause(
                actor="system", correlation_id=request.correlation_id, causation_id=request.run_id
            )
            await asyncio.to_thread(
                self._service.fail_run,
                request.conversation_id,
                run_id=request.run_id,
                error=NOT_QUEUED[0],
                message=NOT_QUEUED[1],
                cause=cause,
            )

    async def wait(self, conversation_id: UUID, run_id: str, *, after: int, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                events = self._feed.follow(
                    conversation_id, after=after, heartbeat_seconds=WAIT_HEARTBEAT_SECONDS
                )
                async with contextlib.aclosing(events):
                    async for item in events:
                        if isinstance(item, FeedEvent) and ends_run(item, run_id):
                            return
