"""Runs whose process died: found and ended, in the embedded mode.

In the embedded mode a run executes inside the API process that accepted it. When
that process is killed (SIGKILL, a crash, the machine) nothing records the run's
end, and its conversation would refuse messages for good (`reject`). Every
`orphan_check_seconds` each API process looks at the runs that have been running
at least that long; a run that no process answers for (infra/runs/control.py, `ping`)
on two checks in a row ends with RunInterrupted(reason="process lost", no retry),
and a message queued behind it starts. Workers mode has leases instead
(infra/runs/worker.py).
"""

import asyncio
import datetime
import uuid
from uuid import UUID

import structlog

from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.runs.control import RunControl
from threadlog.infra.runs.executor import RunExecutor, RunRequest
from threadlog.infra.runs.periodic import every
from threadlog.projections.read_models import ReadModels
from threadlog.projections.runs import Runs, running_since

log = structlog.get_logger(__name__)

PROCESS_LOST = "process lost"


class OrphanedRuns:
    def __init__(
        self,
        service: ConversationService,
        read_models: ReadModels,
        control: RunControl,
        executor: RunExecutor,
        *,
        interval_seconds: float,
    ) -> None:
        self._service = service
        self._read_models = read_models
        self._control = control
        self._executor = executor
        self._interval = interval_seconds
        self._suspects: set[str] = set()

    async def run_forever(self) -> None:
        await every(self._interval, self.check, "orphans.check_failed")

    async def check(self) -> list[str]:
        """Ends the runs found orphaned twice in a row; their ids."""
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=self._interval)
        running = await asyncio.to_thread(self._running, since)
        # Concurrently: an orphan's ping waits out its whole timeout.
        answered = await asyncio.gather(
            *(self._control.is_running_anywhere(run_id) for run_id, _ in running)
        )
        unanswered = {
            run_id: UUID(conversation_id)
            for (run_id, conversation_id), alive in zip(running, answered, strict=True)
            if not alive
        }
        orphans = [run_id for run_id in unanswered if run_id in self._suspects]
        self._suspects = set(unanswered) - set(orphans)
        for run_id in orphans:
            await self.end(unanswered[run_id], run_id)
        return orphans

    def _running(self, since: datetime.datetime) -> list[tuple[str, str]]:
        with self._read_models.view(Runs.name).read() as sql:
            return running_since(sql, since)

    async def end(self, conversation_id: UUID, run_id: str) -> None:
        """Ends the run as RunInterrupted(process lost), and starts what queued behind it."""
        cause = Cause(actor="system", correlation_id=uuid.uuid4().hex, causation_id=run_id)
        written = await asyncio.to_thread(
            self._service.interrupt_run,
            conversation_id,
            run_id=run_id,
            reason=PROCESS_LOST,
            max_retries=0,
            cause=cause,
        )
        if written.value is None:
            return  # it ended meanwhile
        log.warning("run.orphan_interrupted", run_id=run_id, conversation_id=str(conversation_id))
        # A message queued behind it has started: run it here.
        ended = RunRequest(
            conversation_id=conversation_id,
            run_id=run_id,
            message_id="",
            correlation_id=cause.correlation_id,
        )
        await self._executor.start_next(ended)
