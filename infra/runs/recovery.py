"""Runs left open by a killed process, ended when the next one starts (embedded mode).

In the embedded mode on SQLite (no THREADLOG_DATABASE_URL, no workers) a run executes in
the one `threadlog serve` process that uses the data dir, and that process holds a lock
on it (`serve.lock`, released by the kernel when the process dies, however it dies). A
process that takes the lock therefore knows that no other process runs anything: every
run the store shows as running at its start belonged to a process that is gone. It
ends each at once, RunInterrupted(reason="process lost", no retry), and a message queued
behind it starts, instead of waiting for the orphan check's pings to go unanswered
twice (infra/runs/orphans.py), which stays for processes sharing a PostgreSQL store.
"""

import asyncio
import contextlib
import datetime
import fcntl
import os
from pathlib import Path
from typing import IO
from uuid import UUID

import structlog

from threadlog.infra.runs.executor import RunExecutor
from threadlog.infra.runs.orphans import OrphanedRuns
from threadlog.infra.settings import Settings
from threadlog.projections.read_models import ReadModels
from threadlog.projections.runs import Runs, running_since

log = structlog.get_logger(__name__)

LOCK_FILE = "serve.lock"
# How long the start waits for the runs read model to reach the store's last event.
CATCH_UP_SECONDS = 30.0


class DataDirLock:
    """An exclusive lock on the data dir, held for the process's lifetime."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    @classmethod
    def take(cls, data_dir: Path) -> "DataDirLock | None":
        """The lock, or None when another live process holds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = (data_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def owns_every_run(settings: Settings) -> bool:
    """Whether the process that holds the data dir's lock runs every run of its store."""
    return not settings.workers and settings.database_url is None


class LeftOpenRuns:
    """Ends, once, the runs that were running when this process started."""

    def __init__(
        self,
        read_models: ReadModels,
        executor: RunExecutor,
        orphans: OrphanedRuns,
        *,
        started_at: datetime.datetime,
    ) -> None:
        self._read_models = read_models
        self._executor = executor
        self._orphans = orphans
        self._started_at = started_at

    async def end_all(self) -> list[str]:
        """The ids of the runs ended (none that this process started itself)."""
        service = self._read_models.service
        position = await asyncio.to_thread(service.recorder.max_notification_id)
        await self._read_models.wait(Runs.name, position, CATCH_UP_SECONDS)
        left_open = await asyncio.to_thread(self._running)
        ended = []
        for run_id, conversation_id in left_open:
            if self._executor.is_running(run_id):
                continue
            await self._orphans.end(UUID(conversation_id), run_id)
            ended.append(run_id)
        log.info("runs.left_open_ended", runs=len(ended))
        return ended

    def _running(self) -> list[tuple[str, str]]:
        with self._read_models.view(Runs.name).read() as sql:
            return running_since(sql, self._started_at)
