"""The relay repairs a JetStream stream that lost events, from the store, while events
keep being written: afterwards the stream holds every stored event once, in global
order, and a consumer that resumes after the global position it had reached sees no gap."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.backends import BACKENDS, database_url_for
from tests.servers import EmbeddedNatsFactory, NatsNames
from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.stream.nats import (
    HEADER_GLOBAL_POSITION,
    HEADER_MSG_ID,
    HEADER_POSITION,
    StreamNames,
)
from threadlog.infra.stream.relay import Relay

CAUSE = Cause(actor="user:test", correlation_id="repair-test")
Row = tuple[str, int, int]  # event id, position, global position
Fault = Callable[[JetStreamContext, StreamNames], Awaitable[None]]


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationService]:
    store = open_service(
        Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    )
    yield store
    store.close()


class Writer(threading.Thread):
    """Conversations with a run of tokens, a save every few milliseconds, until stopped."""

    def __init__(self, service: ConversationService) -> None:
        super().__init__(name="test-writer")
        self._service = service
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                write_conversation(self._service)
        except BaseException as error:
            self.error = error
            raise

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        if self.error is not None:
            raise self.error


def write_conversation(service: ConversationService) -> None:
    """A conversation, a message, and a run of 15 tokens in three saves."""
    started = service.start_conversation(owner="o", agent="a", title="t", metadata={}, cause=CAUSE)
    posted = service.post_message(
        started.value.id, content="hi", client_message_id=None, model="m", cause=CAUSE
    ).value
    live = service.get_conversation(started.value.id)
    for save in range(3):
        for index in range(5):
            delta = f"{save}.{index}"
            live.stream_token(run_id=posted.run_id, part=0, delta=delta, cause=CAUSE)
        service.save(live)
        time.sleep(0.005)


def stored_rows(service: ConversationService) -> list[Row]:
    rows = []
    for notification in service.recorder.select_notifications(start=1, limit=1_000_000):
        event: Any = service.mapper.to_domain_event(notification)
        rows.append((str(event.event_id), event.originator_version, notification.id))
    return rows


async def stream_rows(js: JetStreamContext, names: StreamNames, start: int = 1) -> list[Row]:
    """The stream's messages from sequence `start` up to its last when asked, as rows (a
    republished event's Nats-Msg-Id is `<event id>:<tag>`)."""
    try:
        info = await js.stream_info(names.stream)
    except nats.js.errors.NotFoundError:
        return []  # deleted, not recreated yet
    if info.state.messages == 0 or start > info.state.last_seq:
        return []
    subscription = await js.subscribe(
        names.event_subjects,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=start),
    )
    rows: list[Row] = []
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return rows
            headers = message.headers or {}
            rows.append(
                (
                    headers[HEADER_MSG_ID].split(":")[0],
                    int(headers[HEADER_POSITION]),
                    int(headers[HEADER_GLOBAL_POSITION]),
                )
            )
            if message.metadata.sequence.stream >= info.state.last_seq:
                return rows  # what the stream held when asked: a relay may publish on
    finally:
        await subscription.unsubscribe()


async def first_sequence_after(js: JetStreamContext, names: StreamNames, position: int) -> int:
    """docs/stream.md's binary search, reading the next message at or after a sequence
    (a repaired tail leaves deleted sequences behind)."""
    info = await js.stream_info(names.stream)
    low, high = info.state.first_seq, info.state.last_seq
    found = high + 1
    while low <= high:
        middle = (low + high) // 2
        try:
            message = await js.get_msg(
                names.stream, middle, subject=names.event_subjects, next=True
            )
        except nats.js.errors.NotFoundError:
            high = middle - 1
            continue
        assert message.seq is not None and message.headers is not None
        if int(message.headers[HEADER_GLOBAL_POSITION]) > position:
            found, high = message.seq, middle - 1
        else:
            low = message.seq + 1
    return found


async def repaired_under_traffic(
    service: ConversationService, nats_url: str, names: StreamNames, fault: Fault
) -> tuple[list[Row], list[Row], list[Row], int]:
    """Relays while events are written, applies `fault` mid-way, writes on, and waits for
    the stream to hold what the store holds. Returns the stored rows, the stream's rows,
    what a consumer resuming after the position it had reached reads, and that position."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    relay = Relay(service, js, names, batch_size=50, repair_interval=0.2)
    relaying = asyncio.create_task(relay.run_forever())
    writer = Writer(service)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while relay.published_position < 150:
            assert writer.is_alive() and time.monotonic() < deadline, writer.error
            await asyncio.sleep(0.02)
        # A consumer has read up to here; then the stream loses events.
        consumed = relay.published_position
        await fault(js, names)
        await asyncio.sleep(1.0)  # written on while the relay repairs
        await asyncio.to_thread(writer.stop)
        stored = await asyncio.to_thread(stored_rows, service)
        deadline = time.monotonic() + 30
        while (streamed := await stream_rows(js, names)) != stored:
            assert time.monotonic() < deadline, (len(streamed), len(stored))
            await asyncio.sleep(0.2)
        resumed = await stream_rows(js, names, await first_sequence_after(js, names, consumed))
    finally:
        if writer.is_alive():
            await asyncio.to_thread(writer.stop)
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        await nc.close()
    return stored, streamed, resumed, consumed


def names_of(nats_names: NatsNames) -> StreamNames:
    return StreamNames(stream=nats_names.stream, prefix=nats_names.subject_prefix)


async def delete_stream(js: JetStreamContext, names: StreamNames) -> None:
    await js.delete_stream(names.stream)


async def purge_stream(js: JetStreamContext, names: StreamNames) -> None:
    await js.purge_stream(names.stream)


async def lose_tail(js: JetStreamContext, names: StreamNames) -> None:
    """The last 60 messages gone, as a crash with unsynced writes loses them."""
    last = (await js.stream_info(names.stream)).state.last_seq
    for sequence in range(last - 59, last + 1):
        # The relay may notice the first deletions and purge the stream meanwhile.
        with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.ServerError):
            await js.delete_msg(names.stream, sequence)


@pytest.mark.parametrize("fault", [delete_stream, purge_stream, lose_tail])
async def test_a_stream_that_lost_events_holds_every_stored_event_once_in_order_again(
    service: ConversationService, nats_url: str, nats_names: NatsNames, fault: Fault
) -> None:
    stored, streamed, resumed, consumed = await repaired_under_traffic(
        service, nats_url, names_of(nats_names), fault
    )
    assert streamed == stored
    assert resumed == [row for row in stored if row[2] > consumed]


async def test_a_relay_started_after_the_stream_lost_its_tail_republishes_only_the_tail(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    names = names_of(nats_names)
    for _ in range(10):
        await asyncio.to_thread(write_conversation, service)
    stored = await asyncio.to_thread(stored_rows, service)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await relay_until_stream_holds(Relay(service, js, names, batch_size=50), js, stored)
        await lose_tail(js, names)  # while no relay runs
        await relay_until_stream_holds(Relay(service, js, names, batch_size=50), js, stored)
        info = await js.stream_info(names.stream)
    finally:
        await nc.close()
    assert info.state.messages == len(stored)
    assert info.state.first_seq == 1  # not purged: only the tail was published again


async def relay_until_stream_holds(relay: Relay, js: JetStreamContext, stored: list[Row]) -> None:
    names = relay._names
    task = asyncio.create_task(relay.run())
    deadline = time.monotonic() + 20
    try:
        while await stream_rows(js, names) != stored:
            if task.done():
                task.result()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_relay_reconnected_to_a_server_that_lost_its_tail_republishes_it_first(
    service: ConversationService,
    nats_names: NatsNames,
    embedded_nats_factory: EmbeddedNatsFactory,
) -> None:
    server = embedded_nats_factory()
    names = names_of(nats_names)
    for _ in range(5):
        await asyncio.to_thread(write_conversation, service)
    nc = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    js = nc.jetstream()
    # No periodic comparison: only the start's and the reconnection's.
    relay = Relay(service, js, names, batch_size=50, repair_interval=0)
    relaying = asyncio.create_task(relay.run())
    try:
        first = await asyncio.to_thread(stored_rows, service)
        deadline = time.monotonic() + 20
        while relay.published_position < first[-1][2]:
            assert not relaying.done() and time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await lose_tail(js, names)  # as a crash of the machine would, then the restart:
        await asyncio.to_thread(server.restart)
        deadline = time.monotonic() + 20
        while not nc.is_connected or nc.stats["reconnects"] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for _ in range(3):  # new events after the reconnection
            await asyncio.to_thread(write_conversation, service)
        stored = await asyncio.to_thread(stored_rows, service)
        deadline = time.monotonic() + 20
        while await stream_rows(js, names) != stored:
            assert not relaying.done()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        info = await js.stream_info(names.stream)
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        await nc.close()
    assert info.state.first_seq == 1  # the tail republished, not the stream rebuilt
    assert info.state.messages == len(stored)
