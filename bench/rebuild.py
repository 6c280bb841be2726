"""Benchmark 3: rebuilding every read model from the whole event log.

The store holds the population (bench/population.py). Each read model is rebuilt
with `ProjectionRunner.rebuild()` (delete its rows and tracking, replay the log in
transactions of the settings' `projection_batch_size`), timed from the call to its
return. The baseline, in the same run, is reading the same log the same way
(`select_notifications` pages of the batch size) without decoding or applying
anything: the rate no projection can beat.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Sample, progress, ratios
from threadlog.domain.application import ConversationService
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import store_environment
from threadlog.projections.read_models import ReadModels

TARGET_EVENTS_PER_SECOND = 20_000.0


@dataclass(frozen=True, kw_only=True)
class RebuildConfig:
    repetitions: int
    batch_size: int = Settings().projection_batch_size


@dataclass(frozen=True, kw_only=True)
class ModelRebuild:
    name: str
    rate: Sample  # events/s
    ratio: Sample  # rebuild rate / log read rate, per repetition
    applied: int  # events the read model applied (the others were skipped)

    @property
    def target_met(self) -> bool:
        return self.rate.median >= TARGET_EVENTS_PER_SECOND


@dataclass(frozen=True, kw_only=True)
class RebuildResult:
    config: RebuildConfig
    events: int
    read_rate: Sample  # events/s of the baseline
    models: list[ModelRebuild]

    @property
    def target_met(self) -> bool:
        return all(model.target_met for model in self.models)


def run_rebuild(
    service: ConversationService, settings: Settings, config: RebuildConfig, read_models_dir: Path
) -> RebuildResult:
    """Rebuilds every read model of `settings`' store; leaves them built."""
    events = service.recorder.max_notification_id() or 0
    models = ReadModels.open(
        service, store_environment(settings), read_models_dir, batch_size=config.batch_size
    )
    try:
        reads: list[float] = []
        rates: dict[str, list[float]] = {name: [] for name in models.runners}
        applied: dict[str, int] = {}
        for repetition in range(config.repetitions):
            if repetition % 2:
                reads.append(_read_rate(service, events, config.batch_size))
            for name, runner in models.runners.items():
                progress(
                    f"rebuild: {name} over {events:,} events, "
                    f"repetition {repetition + 1}/{config.repetitions}"
                )
                started = time.perf_counter()
                runner.rebuild()
                rates[name].append(events / (time.perf_counter() - started))
                applied[name] = runner.applied
            if not repetition % 2:
                reads.append(_read_rate(service, events, config.batch_size))
    finally:
        models.close()
    read_rate = Sample.of(reads)
    return RebuildResult(
        config=config,
        events=events,
        read_rate=read_rate,
        models=[
            ModelRebuild(
                name=name,
                rate=Sample.of(values),
                ratio=ratios(Sample.of(values), read_rate),
                applied=applied[name],
            )
            for name, values in rates.items()
        ],
    )


def _read_rate(service: ConversationService, events: int, batch_size: int) -> float:
    """Events/s of reading the whole log in pages, as a runner's catch-up does."""
    progress(f"rebuild: baseline, reading {events:,} events")
    recorder = service.recorder
    position, read = 0, 0
    started = time.perf_counter()
    while True:
        page = recorder.select_notifications(
            start=position, limit=batch_size, inclusive_of_start=False
        )
        if not page:
            break
        read += len(page)
        position = page[-1].id
    seconds = time.perf_counter() - started
    if read != events:
        raise RuntimeError(f"read {read} events, expected {events}")
    return events / seconds
