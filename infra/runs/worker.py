"""`threadlog worker`: takes runs from the work queue and executes them.

A worker holds a run as a lease: the run's queue message stays unacknowledged while
it executes, and a heartbeat (`in_progress`) every third of the lease keeps JetStream
from handing it to another worker; the worker acks it when the run has ended. When a
worker dies, its lease runs out and JetStream hands the run to another worker, which
records RunInterrupted: with a retry left the run starts again there (its history
rebuilt from events; the lost attempt's tokens stay in the log), otherwise the run
ends and the conversation's next queued run goes to the queue.
"""

import asyncio
import contextlib

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.runs.executor import RunExecutor, RunRequest
from threadlog.infra.runs.workqueue import decode_ticket
from threadlog.infra.stream.nats import StreamNames

log = structlog.get_logger(__name__)

CONSUMER = "workers"
# How long one pull waits for a run before asking again (bounds how fast `stop` is).
FETCH_SECONDS = 1.0
RETRY_PAUSE_SECONDS = 1.0
LOST_REASON = "worker_lost"


class RunWorker:
    def __init__(
        self,
        *,
        service: ConversationService,
        executor: RunExecutor,
        js: JetStreamContext,
        names: StreamNames,
        lease_seconds: float,
        max_retries: int,
        concurrency: int,
    ) -> None:
        self._service = service
        self._executor = executor
        self._js = js
        self._names = names
        self._lease = lease_seconds
        self._max_retries = max_retries
        self._slots = asyncio.Semaphore(concurrency)
        self._held: set[asyncio.Task[None]] = set()
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._taking: asyncio.Task[None] | None = None

    async def start(self) -> None:
        stream = self._names.run_queue_stream
        await self._js.add_consumer(
            stream,
            ConsumerConfig(
                name=CONSUMER,
                durable_name=CONSUMER,
                filter_subject=self._names.run_queue_subject,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._lease,
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        self._subscription = await self._js.pull_subscribe_bind(durable=CONSUMER, stream=stream)
        self._taking = asyncio.create_task(self._take_runs(self._subscription))

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Takes no more runs and lets the runs in flight finish for `drain_seconds`;
        those still going then record why they ended. Each is acked."""
        if self._taking is not None:
            self._taking.cancel()
            await asyncio.gather(self._taking, return_exceptions=True)
        if self._held and drain_seconds > 0:
            log.info("worker.draining", runs=len(self._held), seconds=drain_seconds)
            await asyncio.wait(self._held, timeout=drain_seconds)
        await self._executor.stop()
        await asyncio.gather(*self._held, return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _take_runs(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            await self._slots.acquire()
            try:
                messages = await subscription.fetch(1, timeout=FETCH_SECONDS)
            except nats.errors.TimeoutError:
                messages = []
            except nats.errors.Error as error:
                log.warning("worker.fetch_failed", error=repr(error))
                messages = []
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
            if not messages:
                self._slots.release()
            for message in messages:  # one at most: a slot each
                task = asyncio.create_task(self._hold(message))
                self._held.add(task)
                task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._held.discard(task)
        self._slots.release()

    async def _hold(self, message: Msg) -> None:
        try:
            request = decode_ticket(message.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("worker.bad_ticket", data=message.data[:200])
            await message.term()
            return
        delivered = message.metadata.num_delivered
        log.info("worker.run_taken", run_id=request.run_id, delivered=delivered)
        heartbeat = asyncio.create_task(self._heartbeat(message))
        try:
            if await self._takes(request, delivered):
                await self._execute(request)
            await message.ack()
        except Exception as error:
            # Not acked: the run comes back after the lease, to this worker or another.
            log.error("worker.run_not_held", run_id=request.run_id, error=repr(error))
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, message: Msg) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            with contextlib.suppress(nats.errors.Error):
                await message.in_progress()

    async def _takes(self, request: RunRequest, delivered: int) -> bool:
        """Whether this worker executes the run; a redelivered run's worker was lost."""
        if self._executor.is_running(request.run_id):
            return True  # its own lease ran out and the run came back here: keep it
        conversation = await asyncio.to_thread(
            self._service.get_conversation, request.conversation_id
        )
        if conversation.active_run_id != request.run_id:
            return False  # it ended meanwhile (a stale ticket): nothing to execute or queue
        if delivered == 1:
            return True
        cause = Cause(
            actor="system", correlation_id=request.correlation_id, causation_id=request.run_id
        )
        written = await asyncio.to_thread(
            self._service.interrupt_run,
            request.conversation_id,
            run_id=request.run_id,
            reason=LOST_REASON,
            max_retries=self._max_retries,
            cause=cause,
        )
        retry = written.value
        if retry is None:
            return False  # it ended just now: the lost worker died after recording that
        log.warning("worker.run_interrupted", run_id=request.run_id, retry=retry)
        if not retry:
            await self._queue_next(request)
        return retry

    async def _execute(self, request: RunRequest) -> None:
        if not self._executor.is_running(request.run_id):
            self._executor.start(request)
        while self._executor.is_running(request.run_id):
            await self._executor.wait(request.run_id, self._lease)

    async def _queue_next(self, ended: RunRequest) -> None:
        """The interrupted run's ending started the conversation's next queued run."""
        conversation = await asyncio.to_thread(
            self._service.get_conversation, ended.conversation_id
        )
        run_id = conversation.active_run_id
        if run_id is None or run_id == ended.run_id:
            return
        await self._executor.dispatch(
            RunRequest(
                conversation_id=ended.conversation_id,
                run_id=run_id,
                message_id=conversation.active_message_id,
                correlation_id=conversation.active_correlation_id,
            )
        )
