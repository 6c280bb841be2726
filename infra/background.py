"""The background process: the relay and the read-model projections of `threadlog serve`.

One Python process runs one thread of Python at a time. The API process streams every
token to its clients; the relay (store → JetStream) and the projections (store → read
models) follow the same log a few tens of milliseconds later and need not share its
GIL. With `background_process` on, the API process starts this second process, which
follows the log with one follower (infra/store/follower.py) and feeds both, and stops
it when it stops. Nothing is handed between the two but the store and NATS: the
relay reads what it publishes from the store (its checkpoint says where it was), the
projections keep their checkpoints in their views, and the API process reads the
views and those checkpoints (read-your-writes waits by polling them).

The API process tells the background process what it committed over a pipe, never
blocking a commit: the rows themselves when they fit in one atomic write of the pipe
(a lone token's commit), else the last id. Its commits then NOTIFY no one, as a NOTIFY
costs every listening session a transaction (infra/store/postgres.py); the background
process's follower takes the rows as its own process's commits (no query), and reads
what an id says was committed, coalesced. A message the full pipe refused leaves a gap
the follower reads from the store. Other writers (workers) are heard by their NOTIFY.

The process is started with `multiprocessing`'s spawn (the settings pass as they are,
not through the environment), restarted when it ends unasked, and ends itself when
the API process that started it is gone.
"""

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from typing import cast
from uuid import UUID

import msgspec
import structlog
from eventsourcing.persistence import Notification, Recording

from threadlog.domain.application import ConversationService
from threadlog.infra.interpreter import tune_interpreter
from threadlog.infra.logging import configure_logging
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service, reconnect_promptly, store_environment
from threadlog.infra.store.follower import Follower
from threadlog.infra.store.postgres import committer
from threadlog.infra.stream.nats import StreamNames, connect, ensure_stream
from threadlog.infra.stream.relay import Relay
from threadlog.projections.read_models import ReadModels

log = structlog.get_logger(__name__)

STOP_SECONDS = 10.0
RESTART_DELAY_SECONDS = 1.0
PARENT_CHECK_SECONDS = 1.0


class BackgroundProcess:
    """The API process's handle on the background process: start, watch, stop."""

    def __init__(self, settings: Settings, service: ConversationService) -> None:
        if settings.nats_url is None:
            raise ValueError("the background process needs the NATS server's URL")
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._following: EventType | None = None  # set by the process once it follows
        self._announcements: Connection | None = None  # the pipe's end this process writes
        self._watch: asyncio.Task[None] | None = None
        self.restarts = 0
        service.on_commit(self._announce)

    def start(self) -> None:
        self._process = self._spawn()
        self._watch = asyncio.create_task(self._restart_when_ended())

    def _spawn(self) -> BaseProcess:
        heard, said = self._context.Pipe(duplex=False)
        os.set_blocking(said.fileno(), False)  # a commit never waits for the other process
        self._following = self._context.Event()
        process = self._context.Process(
            target=run_background,
            args=(self._settings, os.getpid(), committer(), heard, self._following),
            name="threadlog-background",
            daemon=True,
        )
        process.start()
        heard.close()  # the other process holds it now
        previous, self._announcements = self._announcements, said
        if previous is not None:
            previous.close()
        log.info("background.started", pid=process.pid)
        return process

    def _announce(self, recordings: Sequence[Recording[UUID]]) -> None:
        """The commit listener (in the saving thread): the commit's rows or its last id,
        or nothing when the pipe is full or closed (the other process reads the gap)."""
        said = self._announcements
        if said is None or not recordings:
            return
        message = None
        # The states alone already too large (a group commit under load): no rows encoded
        # only to be thrown away on the writer's thread.
        if sum(len(r.notification.state) for r in recordings) <= ATOMIC_MESSAGE_BYTES:
            message = _encoder.encode([_row(r.notification) for r in recordings])
        if message is None or len(message) > ATOMIC_MESSAGE_BYTES:
            message = _encoder.encode(recordings[-1].notification.id)
        with contextlib.suppress(OSError):  # BlockingIOError, BrokenPipeError, closed
            said.send_bytes(message)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def state(self) -> str:
        """For /health/ready: "ok", or why not."""
        if self._process is None:
            return "failed: not started"
        if not self._process.is_alive():
            return f"failed: exited {self._process.exitcode}"
        if self._following is None or not self._following.is_set():
            return "starting"  # spawning, importing, opening: seconds on a busy machine
        return "ok"

    async def _restart_when_ended(self) -> None:
        while True:
            process = self._process
            assert process is not None
            await asyncio.to_thread(process.join)
            log.error(
                "background.ended", exitcode=process.exitcode, restart_in=RESTART_DELAY_SECONDS
            )
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            self.restarts += 1
            self._process = self._spawn()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        process = self._process
        if process is None or not process.is_alive():
            return
        if self._announcements is not None:
            self._announcements.close()
            self._announcements = None
        process.terminate()  # SIGTERM: it stops following and closes its connections
        await asyncio.to_thread(process.join, STOP_SECONDS)
        if process.is_alive():
            log.warning("background.killed", pid=process.pid)
            process.kill()
            await asyncio.to_thread(process.join)
        log.info("background.stopped", exitcode=process.exitcode)


# A pipe writes this much at once or nothing (POSIX's PIPE_BUF; Connection adds a
# 4-byte header): a non-blocking write of more could stop half-way and garble the pipe.
ATOMIC_MESSAGE_BYTES = 4096 - 4
_encoder = msgspec.msgpack.Encoder()


_Row = tuple[int, UUID, int, str, bytes]
_decoder = msgspec.msgpack.Decoder(int | list[_Row])


def _row(notification: Notification) -> _Row:
    """A committed row, as `_notification` builds it again."""
    return (
        notification.id,
        cast(UUID, notification.originator_id),
        notification.originator_version,
        notification.topic,
        notification.state,
    )


def _notification(row: _Row) -> Notification:
    number, originator_id, version, topic, state = row
    return Notification(
        id=number, originator_id=originator_id, originator_version=version, topic=topic, state=state
    )


def run_background(
    settings: Settings,
    parent_pid: int,
    parent_committer: str,
    announcements: Connection,
    following: EventType,
) -> None:
    """The background process's main: follows the log until SIGTERM, SIGINT or the
    API process's end. `parent_committer` announces its commits on `announcements`;
    `following` is set once the relay and the projections follow the log."""
    configure_logging(settings)
    heard = _Announcements(parent_committer, announcements)
    asyncio.run(_follow(settings, parent_pid, heard, following))


class _Announcements:
    """What the API process says it committed, handed to the follower in a thread."""

    def __init__(self, committer_id: str, pipe: Connection) -> None:
        self.committer_id = committer_id
        self._pipe = pipe

    def hand_to(self, follower: Follower) -> None:
        announce = follower.follow_announcements_of(self.committer_id)

        def read() -> None:
            with contextlib.suppress(EOFError, OSError):  # the API process closed it or ended
                while True:
                    message = _decoder.decode(self._pipe.recv_bytes())
                    if isinstance(message, int):
                        announce(message)
                    else:
                        follower.offer([_notification(row) for row in message])

        threading.Thread(target=read, name="threadlog-announcements", daemon=True).start()


async def _follow(
    settings: Settings, parent_pid: int, announcements: _Announcements, following: EventType
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    _stop_when_orphaned(parent_pid, lambda: loop.call_soon_threadsafe(stop.set))
    assert settings.nats_url is not None
    async with contextlib.AsyncExitStack() as stack:
        service = await asyncio.to_thread(open_service, settings)
        stack.callback(service.close)
        nc = await connect(settings.nats_url, name="threadlog-background")
        stack.push_async_callback(nc.close)
        names = StreamNames.of(settings)
        js = nc.jetstream()
        await ensure_stream(js, names)
        read_models = await asyncio.to_thread(
            ReadModels.open,
            service,
            store_environment(settings),
            settings.read_models_dir,
            batch_size=settings.projection_batch_size,
            names=None if settings.projections else (),
        )
        stack.callback(read_models.close)
        for runner in read_models.runners.values():
            reconnect_promptly(runner.view)
        follower = Follower(
            service.recorder,
            interval_seconds=settings.follow_interval_ms / 1000,
            batch_size=settings.projection_batch_size,
        )
        stack.callback(follower.stop)
        announcements.hand_to(follower)
        read_models.start(follower)
        tasks: list[asyncio.Task[None]] = []
        if settings.relay:
            relay = Relay(
                service,
                js,
                names,
                batch_size=settings.relay_batch_size,
                follower=follower,
                repair_interval=settings.relay_repair_seconds,
            )
            tasks.append(asyncio.create_task(relay.run_forever()))
        follower.start()
        tune_interpreter()
        following.set()
        log.info(
            "background.following", relay=settings.relay, projections=list(read_models.runners)
        )
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    log.info("background.done")


def _stop_when_orphaned(parent_pid: int, stop: Callable[[], object]) -> None:
    """Calls `stop` once the process that started this one is gone (killed without a
    chance to stop it): this one must not go on relaying for nobody."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        log.warning("background.orphaned", parent_pid=parent_pid)
        stop()

    threading.Thread(target=watch, name="threadlog-parent-watch", daemon=True).start()
