"""The read models of one process: their views, runners, status and rebuild."""

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventsourcing.persistence import OperationalError

from threadlog.domain.application import ConversationService
from threadlog.projections.agent_usage import AgentUsage
from threadlog.projections.conversation_list import ConversationList
from threadlog.projections.message_history import MessageHistory
from threadlog.projections.run_stats import RunStats
from threadlog.projections.runner import LogSource, ProjectionRunner, ReadModel
from threadlog.projections.runs import Runs
from threadlog.projections.views import View, open_view


class PositionNotReached(ValueError):
    """A reader asked for a global position the store has not reached: no write ever
    answered it, so waiting could not help."""

    def __init__(self, position: int, store_position: int) -> None:
        super().__init__(
            f"min_position {position} is beyond the store's latest position {store_position}"
        )
        self.position = position
        self.store_position = store_position


class ReadModelBehind(OperationalError):
    """A read model did not reach the position a reader asked for in time.

    An `OperationalError` (like a store that does not answer): HTTP maps it to 503
    with `Retry-After`."""

    def __init__(self, name: str, position: int, reached: int) -> None:
        super().__init__(f"read model {name} is at {reached}, not yet at {position}")
        self.name = name
        self.position = position
        self.reached = reached


def read_model_classes() -> tuple[type[ReadModel], ...]:
    return (ConversationList, MessageHistory, Runs, RunStats, AgentUsage)


@dataclass(frozen=True, kw_only=True)
class ProjectionStatus:
    name: str
    position: int
    store_position: int
    running: bool
    applied: int
    skipped: dict[str, int]
    error: str | None

    @property
    def lag(self) -> int:
        return max(self.store_position - self.position, 0)


@dataclass
class ReadModels:
    """Every read model over one store. Runners follow the log only after `start()`."""

    service: ConversationService
    runners: dict[str, ProjectionRunner]
    _factories: list[Any] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        service: ConversationService,
        store_env: Mapping[str, str],
        sqlite_dir: Path,
        *,
        batch_size: int = 500,
        names: tuple[str, ...] | None = None,
    ) -> "ReadModels":
        runners: dict[str, ProjectionRunner] = {}
        factories = []
        try:
            for model_class in read_model_classes():
                if names is not None and model_class.name not in names:
                    continue
                view, factory = open_view(
                    model_class.name, model_class.schema, store_env, sqlite_dir
                )
                factories.append(factory)
                runners[model_class.name] = ProjectionRunner(
                    service, model_class(), view, batch_size=batch_size
                )
        except BaseException:
            for factory in factories:
                factory.close()
            raise
        return cls(service, runners, factories)

    def view(self, name: str) -> View:
        return self.runners[name].view

    def start(self, source: LogSource | None = None) -> None:
        """Follows the log: every runner fed by `source` (the process's one follower of
        the log), or each by a subscription of its own."""
        for runner in self.runners.values():
            runner.start(source)

    def stop(self) -> None:
        for runner in self.runners.values():
            runner.stop()

    def close(self) -> None:
        self.stop()
        for factory in self._factories:
            factory.close()

    async def wait(self, name: str, position: int | None, seconds: float) -> None:
        """Returns once read model `name` reflects every event up to global `position`;
        raises `ReadModelBehind` if that takes longer than `seconds`."""
        if position is None:
            return
        runner = self.runners[name]
        if runner.position >= position:
            return
        store_position = await asyncio.to_thread(self.service.recorder.max_notification_id)
        if position > (store_position or 0):
            raise PositionNotReached(position, store_position or 0)
        if not await runner.wait_async(position, seconds):
            raise ReadModelBehind(name, position, runner.position)

    def status(self) -> list[ProjectionStatus]:
        store_position = self.service.recorder.max_notification_id() or 0
        return [
            ProjectionStatus(
                name=name,
                # A running runner's tracking record may trail it over skipped events.
                position=max(runner.checkpoint(), runner.position if runner.is_running else 0),
                store_position=store_position,
                running=runner.is_running,
                applied=runner.applied,
                skipped=dict(runner.skipped),
                error=runner.error,
            )
            for name, runner in self.runners.items()
        ]


class RateReport:
    """Progress of a replay on one line: events, events/s and the time left."""

    def __init__(self, name: str, write: Callable[[str], Any], every: float = 0.5) -> None:
        self._name = name
        self._write = write
        self._every = every
        self._started = time.monotonic()
        self._last_write = 0.0
        self._done = 0
        self._total = 0

    def __call__(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        now = time.monotonic()
        if now - self._last_write >= self._every:
            self._last_write = now
            self._write(self._line(now))

    def finish(self) -> None:
        self._done = self._total = max(self._done, self._total)
        self._write(self._line(time.monotonic()) + "\n")

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        eta = (self._total - self._done) / rate if rate > 0 else 0.0
        return (
            f"\r{self._name}: {self._done}/{self._total} events, "
            f"{rate:,.0f} events/s, ETA {eta:,.1f} s"
        )
