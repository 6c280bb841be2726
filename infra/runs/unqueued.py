"""Runs stored but never queued, found and queued (workers mode).

An API process stores a message (with its run's RunStarted) and then publishes the
run's ticket to the work queue. Killed in between, or with the ticket lost by NATS
afterwards, it leaves a run that the store shows as running and that no worker will
ever take. Every `interval_seconds` (THREADLOG_ORPHAN_CHECK_SECONDS) an API process looks
at the runs that have been running at least that long and at the tickets in the work
queue (a worker's ticket stays there, unacknowledged, while it executes the run); a run
with no ticket whose conversation still has it active is queued again. So such a run
starts within two intervals of its message. Runs taken by a worker that died are the
leases' business (infra/runs/worker.py), not this check's.
"""

import asyncio
import datetime
from uuid import UUID

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from threadlog.domain.application import ConversationService
from threadlog.infra.runs.executor import RunRequest
from threadlog.infra.runs.periodic import every
from threadlog.infra.runs.workqueue import QueuedRuns, decode_ticket
from threadlog.infra.stream.nats import StreamNames
from threadlog.projections.read_models import ReadModels
from threadlog.projections.runs import Runs, running_since

log = structlog.get_logger(__name__)


class UnqueuedRuns:
    def __init__(
        self,
        service: ConversationService,
        read_models: ReadModels,
        js: JetStreamContext,
        names: StreamNames,
        queue: QueuedRuns,
        *,
        interval_seconds: float,
    ) -> None:
        self._service = service
        self._read_models = read_models
        self._js = js
        self._names = names
        self._queue = queue
        self._interval = interval_seconds

    async def run_forever(self) -> None:
        await every(self._interval, self.check, "unqueued.check_failed")

    async def check(self) -> list[str]:
        """Queues the runs running for an interval with no ticket; their ids."""
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=self._interval)
        running = await asyncio.to_thread(self._running, since)
        if not running:
            return []
        ticketed = await self.queued_run_ids()
        queued = []
        for run_id, conversation_id in running:
            if run_id not in ticketed and await self._queue_again(UUID(conversation_id), run_id):
                queued.append(run_id)
        return queued

    async def queued_run_ids(self) -> set[str]:
        """The runs with a ticket in the work queue (waiting, or held by a worker)."""
        stream = self._names.run_queue_stream
        subject = self._names.run_queue_subject
        state = (await self._js.stream_info(stream)).state
        found: set[str] = set()
        sequence = state.first_seq
        while state.messages and sequence <= state.last_seq:
            try:
                message = await self._js.get_msg(stream, sequence, subject=subject, next=True)
            except NotFoundError:
                break
            if message.data is not None:
                found.add(decode_ticket(message.data).run_id)
            sequence = (message.seq or sequence) + 1
        return found

    def _running(self, since: datetime.datetime) -> list[tuple[str, str]]:
        with self._read_models.view(Runs.name).read() as sql:
            return running_since(sql, since)

    async def _queue_again(self, conversation_id: UUID, run_id: str) -> bool:
        conversation = await asyncio.to_thread(self._service.get_conversation, conversation_id)
        if conversation.active_run_id != run_id:
            return False  # it ended (the read model lags behind the store)
        log.warning("run.unqueued_queued", run_id=run_id, conversation_id=str(conversation_id))
        request = RunRequest(
            conversation_id=conversation_id,
            run_id=run_id,
            message_id=conversation.active_message_id,
            correlation_id=conversation.active_correlation_id,
        )
        # Not the run id: JetStream would drop it as a repeat of a ticket lost in NATS.
        # The version: API processes that check at once queue it once between them.
        # (NATS unreachable: the run fails, as any run that cannot be queued.)
        await self._queue.dispatch(request, msg_id=f"{run_id}:again:{conversation.version}")
        return True
