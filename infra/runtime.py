"""The running service's adapters, built from settings in one place.

This decides SQLite or PostgreSQL, embedded or external NATS, the demo model or a
pydantic-ai model string. `create_app` (http/) and the CLI call it; nothing else
builds adapters.
"""

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic_ai.models import Model

from threadlog.domain.agent_service import AgentService
from threadlog.domain.application import ConversationService
from threadlog.domain.identity_service import IdentityService
from threadlog.infra import metrics
from threadlog.infra.agents.catalog import AgentCatalog
from threadlog.infra.agents.registry import AgentRegistry
from threadlog.infra.agents.streams import pull_without_yielding
from threadlog.infra.auth import (
    Authenticator,
    Passwords,
    Tokens,
    announce_admin_key,
    ensure_admin,
    open_identities,
)
from threadlog.infra.background import BackgroundProcess
from threadlog.infra.runs.control import RunControl
from threadlog.infra.runs.executor import RunExecutor
from threadlog.infra.runs.flusher import FlushPolicy
from threadlog.infra.runs.history import CompactionPolicy, warm_model_messages
from threadlog.infra.runs.orphans import OrphanedRuns
from threadlog.infra.runs.recovery import DataDirLock, LeftOpenRuns, owns_every_run
from threadlog.infra.runs.unqueued import UnqueuedRuns
from threadlog.infra.runs.workqueue import LocalRuns, QueuedRuns, Runs, ensure_run_queue
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import ContentKeys, open_content_keys
from threadlog.infra.store.eventstore import (
    EventLog,
    open_service,
    reconnect_promptly,
    store_environment,
    while_schema_races,
)
from threadlog.infra.store.follower import Follower
from threadlog.infra.store.loop_writer import group_commit_writer
from threadlog.infra.store.writer import GroupCommit
from threadlog.infra.stream.embedded import EmbeddedNats
from threadlog.infra.stream.feed import ConversationFeed
from threadlog.infra.stream.frames import ServedFrames
from threadlog.infra.stream.live import LiveEvents
from threadlog.infra.stream.nats import StreamNames, connect, ensure_stream
from threadlog.infra.stream.ratelimit import RateLimiter, open_bucket
from threadlog.infra.stream.relay import Relay
from threadlog.projections.read_models import ReadModels
from threadlog.projections.runs import Runs as RunsReadModel
from threadlog.projections.runs import count_by_status

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(kw_only=True)
class Runtime:
    settings: Settings
    service: ConversationService
    event_log: EventLog
    writer: GroupCommit
    nc: NatsClient
    js: JetStreamContext
    names: StreamNames
    feed: ConversationFeed
    executor: RunExecutor
    control: RunControl
    runs: Runs
    model_name: str  # the default agent's
    agents: AgentRegistry
    catalog: AgentCatalog
    read_models: ReadModels
    identities: IdentityService
    content: ContentKeys
    authenticator: Authenticator
    passwords: Passwords
    tokens: Tokens
    rate_limiter: RateLimiter | None = None
    relay: Relay | None = None
    # The relay and the projections' own process (`background_process`), if any.
    background_process: BackgroundProcess | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        model: Model | None = None,
        agents: AgentRegistry | None = None,
        read_model_names: tuple[str, ...] | None = None,
    ) -> AsyncIterator["Runtime"]:
        """`read_model_names`: the read models to open (default all; a worker reads none)."""
        agents = agents or AgentRegistry.build(settings, model)
        started_at = datetime.datetime.now(datetime.UTC)
        async with contextlib.AsyncExitStack() as stack:
            # Held: no other process runs this store's runs (infra/runs/recovery.py).
            lock = DataDirLock.take(settings.data_dir) if owns_every_run(settings) else None
            if lock is not None:
                stack.callback(lock.release)
            nats_url = settings.nats_url or await _start_embedded_nats(settings, stack)
            content = await _creating_schema(lambda: open_content_keys(settings))
            stack.callback(content.close)
            service = await _creating_schema(lambda: open_service(settings, content))
            stack.callback(service.close)
            identities = await _creating_schema(lambda: open_identities(settings))
            stack.callback(identities.close)
            agent_store = await _creating_schema(lambda: open_agents(settings))
            stack.callback(agent_store.close)
            catalog = AgentCatalog(agent_store, agents, settings, model)
            await _creating_schema(catalog.record_system_agents)
            created_key = await _creating_schema(lambda: ensure_admin(identities, settings))
            if created_key is not None:
                announce_admin_key(created_key)
            tokens = Tokens(settings)
            writer = group_commit_writer(
                service,
                max_events=settings.writer_max_events,
                linger_seconds=settings.writer_linger_ms / 1000,
            )
            await writer.open()
            stack.push_async_callback(writer.close)
            nc = await connect(nats_url)
            stack.push_async_callback(nc.close)
            names = StreamNames.of(settings)
            js = nc.jetstream()
            await ensure_stream(js, names)
            event_log = EventLog(service)
            read_models = await _creating_schema(
                lambda: ReadModels.open(
                    service,
                    store_environment(settings),
                    settings.read_models_dir,
                    batch_size=settings.projection_batch_size,
                    names=read_model_names,
                )
            )
            stack.callback(read_models.close)
            for runner in read_models.runners.values():
                reconnect_promptly(runner.view)
            executor = RunExecutor(
                service,
                event_log,
                writer,
                catalog,
                policy=FlushPolicy(
                    batch_size=settings.token_batch_size,
                    interval_seconds=settings.token_flush_interval_ms / 1000,
                ),
                snapshot_interval=settings.snapshot_interval,
                content=content,
                compaction=CompactionPolicy(
                    tail_ratio=settings.compaction_tail_ratio,
                    summary_tokens=settings.compaction_summary_tokens,
                    tokenizer=settings.tokenizer,
                ),
            )
            await asyncio.to_thread(warm_model_messages)
            pull_without_yielding()
            control = RunControl(nc, names, executor, service)
            await control.start()
            stack.push_async_callback(control.stop)
            await _forget_erased_keys(nc, names, content)
            live = await LiveEvents.connect(nats_url, names, content)
            stack.push_async_callback(live.close)
            service.on_commit(live.committed)
            service.on_commit(metrics.count_committed)
            feed = ConversationFeed(event_log, live, content, _served_frames(settings, content))
            runs = await _runs(settings, nc, names, service, feed, executor)
            runtime = cls(
                settings=settings,
                service=service,
                event_log=event_log,
                writer=writer,
                nc=nc,
                js=js,
                names=names,
                feed=feed,
                executor=executor,
                control=control,
                runs=runs,
                model_name=agents.model_of(settings.agent),
                agents=agents,
                catalog=catalog,
                read_models=read_models,
                identities=identities,
                content=content,
                authenticator=Authenticator(identities, tokens, settings),
                passwords=Passwords(),
                tokens=tokens,
            )
            if settings.rate_limit_per_key or settings.rate_limit_per_ip:
                window = settings.rate_limit_window_seconds
                bucket = await open_bucket(js, f"{names.stream}_RATES", window)
                runtime.rate_limiter = RateLimiter(
                    bucket, window_seconds=window, connected=lambda: nc.is_connected
                )
            # The relay and the projections run here, or in the background process.
            in_background = bool(settings.background_process) and (
                settings.relay or settings.projections
            )
            here = not in_background
            # One follower of the log feeds the projections and the relay, coalesced
            # (a process with neither, a worker, opens none: it has connections of its own).
            follower = None
            if here and (settings.projections or settings.relay):
                follower = Follower(
                    service.recorder,
                    interval_seconds=settings.follow_interval_ms / 1000,
                    batch_size=settings.projection_batch_size,
                )
                stack.callback(follower.stop)
                follower.follow_commits_of(service)
            if here and settings.projections:
                read_models.start(follower)
            if not settings.workers and RunsReadModel.name in read_models.runners:
                orphans = OrphanedRuns(
                    service,
                    read_models,
                    control,
                    executor,
                    interval_seconds=settings.orphan_check_seconds,
                )
                if lock is not None:  # every run open now belongs to a dead process
                    left_open = LeftOpenRuns(read_models, executor, orphans, started_at=started_at)
                    runtime.background.append(asyncio.create_task(_end_left_open(left_open)))
                if settings.orphan_check_seconds > 0:
                    runtime.background.append(asyncio.create_task(orphans.run_forever()))
            if (
                isinstance(runs, QueuedRuns)
                and RunsReadModel.name in read_models.runners
                and settings.orphan_check_seconds > 0
            ):
                unqueued = UnqueuedRuns(
                    service,
                    read_models,
                    js,
                    names,
                    runs,
                    interval_seconds=settings.orphan_check_seconds,
                )
                runtime.background.append(asyncio.create_task(unqueued.run_forever()))
            if here and settings.relay:
                runtime.relay = Relay(
                    service,
                    js,
                    names,
                    batch_size=settings.relay_batch_size,
                    follower=follower,
                    committed_at=live.committed_at,
                    repair_interval=settings.relay_repair_seconds,
                )
                runtime.background.append(asyncio.create_task(runtime.relay.run_forever()))
            if follower is not None:
                follower.start()
            if in_background:
                runtime.background_process = BackgroundProcess(
                    settings.replace(nats_url=nats_url), service
                )
                runtime.background_process.start()
                stack.push_async_callback(runtime.background_process.stop)
            metrics.RUNTIME.sources = runtime.metric_sources()
            stack.callback(setattr, metrics.RUNTIME, "sources", None)
            stack.push_async_callback(runtime._stop_background)
            stack.push_async_callback(runtime.executor.stop)
            log.info(
                "runtime.started",
                store="postgresql" if settings.database_url else f"sqlite:{settings.sqlite_path}",
                nats=nats_url,
                model=runtime.model_name,
            )
            yield runtime

    def metric_sources(self) -> metrics.RuntimeSources:
        """What /metrics reads when scraped: the store's head, the relay's and every read
        model's position, and the runs read model's counts (blocking calls)."""
        relay, read_models = self.relay, self.read_models
        runs = read_models.runners.get(RunsReadModel.name)

        def runs_by_status() -> dict[str, int]:
            assert runs is not None
            with runs.view.read() as sql:
                return count_by_status(sql)

        return metrics.RuntimeSources(
            store_head=lambda: self.service.recorder.max_notification_id() or 0,
            relay_position=(lambda: relay.published_position) if relay is not None else None,
            projection_positions=lambda: [(s.name, s.position) for s in read_models.status()],
            runs_by_status=runs_by_status if runs is not None else None,
        )

    async def _stop_background(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)


def open_agents(settings: Settings) -> AgentService:
    """The agents store: its own tables next to the events (its own file on SQLite)."""
    env = store_environment(settings)
    env.update(POSTGRES_POOL_SIZE="2", POSTGRES_MAX_OVERFLOW="4")
    if settings.database_url is None:
        env.update(
            SQLITE_DBNAME=str(settings.agents_sqlite_path),
            APPLICATION_RECORDER_TOPIC=get_topic(SQLiteApplicationRecorder),
        )
    service = AgentService(env)
    reconnect_promptly(service.recorder)
    return service


async def _creating_schema(open_: Callable[[], T]) -> T:
    """`while_schema_races(open_)`, off the event loop."""
    return await asyncio.to_thread(while_schema_races, open_)


async def _runs(
    settings: Settings,
    nc: NatsClient,
    names: StreamNames,
    service: ConversationService,
    feed: ConversationFeed,
    executor: RunExecutor,
) -> Runs:
    if not settings.workers:
        return LocalRuns(executor)
    js = nc.jetstream()
    await ensure_run_queue(js, names)
    queued = QueuedRuns(js, names, service, feed, connected=lambda: nc.is_connected)
    executor.dispatch = queued.dispatch  # a run's ending queues the next one too
    return queued


async def _end_left_open(left_open: LeftOpenRuns) -> None:
    try:
        await left_open.end_all()
    except asyncio.CancelledError:
        raise
    except Exception as error:  # the orphan check ends them later
        log.warning("runs.left_open_failed", error=repr(error))


def _served_frames(settings: Settings, keys: ContentKeys) -> ServedFrames | None:
    if settings.replay_cache_mb == 0:
        return None
    frames = ServedFrames(keys, settings.replay_cache_mb * 1024 * 1024)
    metrics.REPLAY_KEPT_BYTES.set_function(lambda: frames.size)
    return frames


async def _forget_erased_keys(nc: NatsClient, names: StreamNames, keys: ContentKeys) -> None:
    """Another process erased an owner's keys: drop what this one caches of them."""

    async def forget(message: Msg) -> None:
        keys.forget(message.data.decode())

    await nc.subscribe(names.content_erased_subject, cb=forget)


async def _start_embedded_nats(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    server = EmbeddedNats(settings.nats_data_dir, sync_interval=settings.nats_sync_interval)
    await asyncio.to_thread(server.start)
    stack.callback(server.stop)
    log.info("nats.embedded_started", url=server.url, data_dir=str(settings.nats_data_dir))
    return server.url
