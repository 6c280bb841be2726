"""The relay puts every committed event on the JetStream stream once, in global order,
and resumes from its checkpoint after a stop or a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
import pytest
from eventsourcing.persistence import Notification, Tracking, TrackingRecorder
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from tests.backends import BACKENDS, database_url_for
from tests.servers import EmbeddedNatsFactory, NatsNames
from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import open_content_keys
from threadlog.infra.store.envelope import encode_envelope, stored_envelopes
from threadlog.infra.store.eventstore import EventLog, StoredRow, open_service, open_tracking
from threadlog.infra.store.follower import Follower
from threadlog.infra.stream.live import Committed, LiveEvents
from threadlog.infra.stream.nats import (
    HEADER_CONVERSATION,
    HEADER_GLOBAL_POSITION,
    HEADER_MSG_ID,
    HEADER_POSITION,
    StreamNames,
    ensure_stream,
)
from threadlog.infra.stream.relay import Relay

CAUSE = Cause(actor="user:test", correlation_id="relay-test")


@pytest.fixture(params=BACKENDS)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationService]:
    store = open_service(
        Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    )
    yield store
    store.close()


def write_events(
    service: ConversationService, conversations: int, tokens: int
) -> list[tuple[str, int, int]]:
    """Writes runs with tokens; returns (event id, position, global position) in global order."""
    for _ in range(conversations):
        started = service.start_conversation(
            owner="o", agent="a", title="t", metadata={}, cause=CAUSE
        )
        posted = service.post_message(
            started.value.id, content="hi", client_message_id=None, model="m", cause=CAUSE
        ).value
        live = service.get_conversation(started.value.id)
        for index in range(tokens):
            live.stream_token(run_id=posted.run_id, part=0, delta=f"t{index}", cause=CAUSE)
        service.save(live)
    log = EventLog(service)
    rows = []
    for notification in service.recorder.select_notifications(start=1, limit=1_000_000):
        event: Any = service.mapper.to_domain_event(notification)
        rows.append((str(event.event_id), event.originator_version, notification.id))
    assert len(rows) == log.max_global_position()
    return rows


async def stream_contents(url: str, names: StreamNames) -> list[tuple[str, int, int]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(names.stream)).state.messages
        subscription = await js.subscribe(
            names.event_subjects, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        rows = []
        for _ in range(total):
            message = await subscription.next_msg(timeout=5)
            headers = message.headers or {}
            rows.append(
                (
                    headers[HEADER_MSG_ID].split(":")[0],  # a repair's copy: <id>:<tag>
                    int(headers[HEADER_POSITION]),
                    int(headers[HEADER_GLOBAL_POSITION]),
                )
            )
        return rows
    finally:
        await nc.close()


async def relay_until(relay: Relay, position: int) -> None:
    task = asyncio.create_task(relay.run())
    try:
        while relay.published_position < position:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class CrashingTracking(TrackingRecorder):
    """Records `allowed` checkpoints, then fails: a crash after a publish, before its checkpoint."""

    def __init__(self, real: TrackingRecorder, allowed: int) -> None:
        self._real = real
        self._allowed = allowed

    def insert_tracking(self, tracking: Tracking) -> None:
        if self._allowed == 0:
            raise ConnectionError("the process died before the checkpoint")
        self._allowed -= 1
        self._real.insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._real.max_tracking_id(application_name)


def names_of(nats_names: NatsNames) -> StreamNames:
    return StreamNames(stream=nats_names.stream, prefix=nats_names.subject_prefix)


async def test_the_relay_publishes_every_event_once_in_global_order(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    expected = write_events(service, conversations=5, tokens=40)
    names = names_of(nats_names)
    nc = await nats.connect(nats_url)
    try:
        await relay_until(Relay(service, nc.jetstream(), names, batch_size=50), expected[-1][2])
    finally:
        await nc.close()
    assert await stream_contents(nats_url, names) == expected


async def test_the_relay_resumes_after_a_stop_with_nothing_lost_or_duplicated(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    expected = write_events(service, conversations=10, tokens=100)
    names = names_of(nats_names)
    nc = await nats.connect(nats_url)
    try:
        await relay_until(Relay(service, nc.jetstream(), names, batch_size=25), 300)
        # Stopped mid-stream: more events arrive while no relay runs.
        expected += write_events(service, conversations=2, tokens=50)[len(expected) :]
        second = Relay(service, nc.jetstream(), names, batch_size=25)
        assert 300 <= second.checkpoint() < expected[-1][2]
        await relay_until(second, expected[-1][2])
    finally:
        await nc.close()
    assert await stream_contents(nats_url, names) == expected


async def test_a_crash_between_publish_and_checkpoint_duplicates_nothing(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    expected = write_events(service, conversations=4, tokens=100)
    names = names_of(nats_names)
    nc = await nats.connect(nats_url)
    try:
        crashing = Relay(
            service,
            nc.jetstream(),
            names,
            batch_size=50,
            tracking=CrashingTracking(open_tracking(service), 2),
            checkpoint_seconds=0,  # a checkpoint after every batch, until it fails
        )
        with pytest.raises(ConnectionError):
            await crashing.run()
        checkpoint = crashing.checkpoint()
        published = len(await stream_contents(nats_url, names))
        assert published > checkpoint  # the last batch went out but was not checkpointed
        await relay_until(Relay(service, nc.jetstream(), names, batch_size=50), expected[-1][2])
    finally:
        await nc.close()
    assert await stream_contents(nats_url, names) == expected


async def test_a_publish_never_acknowledged_fails_the_batch_instead_of_stalling_the_relay(
    service: ConversationService,
    nats_names: NatsNames,
    embedded_nats_factory: EmbeddedNatsFactory,
) -> None:
    server = embedded_nats_factory()
    expected = write_events(service, conversations=2, tokens=20)
    names = names_of(nats_names)
    nc = await nats.connect(server.url)
    try:
        relay = Relay(service, nc.jetstream(), names, ack_timeout=0.5)
        running = asyncio.create_task(relay.run())
        while relay.published_position < expected[-1][2]:
            await asyncio.sleep(0.01)
        os.kill(server.pid or 0, signal.SIGSTOP)  # still connected, but no ack comes back
        try:
            more = write_events(service, conversations=1, tokens=5)[len(expected) :]
            done, _ = await asyncio.wait({running}, timeout=10)
        finally:
            os.kill(server.pid or 0, signal.SIGCONT)
            running.cancel()
        assert running in done
        assert isinstance(running.exception(), TimeoutError)
        assert relay.checkpoint() == expected[-1][2]
        await relay_until(Relay(service, nc.jetstream(), names), more[-1][2])
    finally:
        await nc.close()
    assert await stream_contents(server.url, names) == expected + more


class CountingTracking(TrackingRecorder):
    """Counts the checkpoints recorded."""

    def __init__(self, real: TrackingRecorder) -> None:
        self._real = real
        self.inserts = 0

    def insert_tracking(self, tracking: Tracking) -> None:
        self.inserts += 1
        self._real.insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._real.max_tracking_id(application_name)


async def test_the_relay_records_its_checkpoint_at_most_once_a_second_and_when_it_stops(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    names = names_of(nats_names)
    write_events(service, conversations=2, tokens=10)  # before: read by the relay itself
    follower = Follower(service.recorder, interval_seconds=0.05)
    follower.start()
    tracking = CountingTracking(open_tracking(service))
    nc = await nats.connect(nats_url)
    try:
        relay = Relay(service, nc.jetstream(), names, follower=follower, tracking=tracking)
        task = asyncio.create_task(relay.run())
        started = time.monotonic()
        for _ in range(20):  # one commit each, many within one interval
            expected = await asyncio.to_thread(write_events, service, 1, 3)
        while relay.published_position < expected[-1][2]:
            assert not task.done()
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await nc.close()
        follower.stop()
    assert await stream_contents(nats_url, names) == expected
    assert tracking.inserts <= 2 + elapsed  # 60 commits, relayed in more batches than that
    assert relay.checkpoint() == expected[-1][2]  # recorded as it stopped


async def test_a_relay_whose_checkpoint_trails_resumes_after_the_streams_last_event(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    names = names_of(nats_names)
    expected = write_events(service, conversations=3, tokens=20)
    nc = await nats.connect(nats_url)
    try:
        await relay_until(Relay(service, nc.jetstream(), names), expected[-1][2])
        new = write_events(service, conversations=1, tokens=5)[len(expected) :]
        published: list[str] = []  # every publish, even those JetStream would drop

        async def seen(message: Msg) -> None:
            published.append((message.headers or {})[HEADER_MSG_ID])

        await nc.subscribe(names.event_subjects, cb=seen)
        # A relay that never checkpointed (a crash before its first one): the stream
        # holds the events already, maybe for longer than JetStream's duplicate window.
        fresh = Relay(service, nc.jetstream(), names, tracking=ForgetfulTracking())
        await relay_until(fresh, new[-1][2])
        await nc.flush()
    finally:
        await nc.close()
    assert published == [event_id for event_id, _, _ in new]
    assert await stream_contents(nats_url, names) == expected + new


async def test_a_stream_left_by_another_store_does_not_move_the_relay_on(
    service: ConversationService, nats_url: str, nats_names: NatsNames
) -> None:
    names = names_of(nats_names)
    expected = write_events(service, conversations=2, tokens=10)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, names)
        stranger = str(uuid.uuid4())
        await js.publish(  # another store's event, far ahead of this store's log
            names.conversation_subject(stranger, "TokenStreamed"),
            b"{}",
            headers={
                HEADER_MSG_ID: str(uuid.uuid4()),
                HEADER_POSITION: "7",
                HEADER_GLOBAL_POSITION: str(expected[-1][2] - 1),
                HEADER_CONVERSATION: stranger,
            },
        )
        await relay_until(Relay(service, js, names), expected[-1][2])
    finally:
        await nc.close()
    assert (await stream_contents(nats_url, names))[1:] == expected


class ForgetfulTracking(TrackingRecorder):
    """Checkpoints nothing: a relay that crashed before recording any."""

    def insert_tracking(self, tracking: Tracking) -> None:
        pass

    def max_tracking_id(self, application_name: str) -> int | None:
        return None


async def test_the_relay_publishes_what_this_process_committed_as_the_live_path_encoded_it(
    service: ConversationService, nats_url: str, nats_names: NatsNames, tmp_path: Path
) -> None:
    names = names_of(nats_names)
    keys = open_content_keys(Settings(data_dir=tmp_path))
    live = await LiveEvents.connect(nats_url, names, keys)
    service.on_commit(live.committed)
    reused: list[int] = []

    def committed_at(position: int) -> Committed | None:
        found = live.committed_at(position)
        if found is not None:
            reused.append(position)
        return found

    nc = await nats.connect(nats_url)
    try:
        expected = write_events(service, conversations=3, tokens=20)
        relay = Relay(service, nc.jetstream(), names, committed_at=committed_at)
        await relay_until(relay, expected[-1][2])
        payloads = await stream_payloads(nc, names, len(expected))
    finally:
        await nc.close()
        await live.close()
        keys.close()
    assert reused == [position for _, _, position in expected]  # none encoded again
    rows = service.recorder.select_notifications(start=1, limit=1000)
    assert payloads == [row_payload(service, row) for row in rows]  # the same bytes


async def stream_payloads(nc: NatsClient, names: StreamNames, count: int) -> list[bytes]:
    subscription = await nc.jetstream().subscribe(
        names.event_subjects, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    return [(await subscription.next_msg(timeout=5)).data for _ in range(count)]


def row_payload(service: ConversationService, row: Notification) -> bytes:
    stored = StoredRow(row.originator_version, row.topic, row.state, row.id)
    (item,) = stored_envelopes([stored], UUID(str(row.originator_id)), service.mapper)
    return encode_envelope(item)
