"""The relay: committed events, in global order, onto the JetStream stream.

It follows the store's notification log with the recorder's subscription (LISTEN/
NOTIFY on PostgreSQL), publishes each event with `Nats-Msg-Id: <event id>` so
JetStream drops the duplicates a crash between publish and checkpoint would cause,
and records its checkpoint in the store's tracking table after each acknowledged
batch. A failure stops the loop loudly; it restarts from the checkpoint.
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import cast

import structlog
from eventsourcing.persistence import (
    ApplicationRecorder,
    Notification,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from nats.js import JetStreamContext

from threadlog.domain.application import ConversationService
from threadlog.domain.events import ConversationEvent
from threadlog.infra.store.envelope import encode_envelope, envelope
from threadlog.infra.store.eventstore import open_tracking
from threadlog.infra.stream.nats import StreamNames, ensure_stream, event_headers

log = structlog.get_logger(__name__)

RESTART_DELAY_SECONDS = 1.0
MAX_IN_FLIGHT = 2000
# A publish whose ack never comes (lost while NATS restarted) must not stall the relay
# for good: past this the batch fails and is published again from the checkpoint
# (JetStream drops the copies by Nats-Msg-Id).
ACK_TIMEOUT_SECONDS = 10.0


class Relay:
    def __init__(
        self,
        service: ConversationService,
        js: JetStreamContext,
        names: StreamNames,
        *,
        batch_size: int = 500,
        tracking: TrackingRecorder | None = None,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
    ) -> None:
        self._ack_timeout = ack_timeout
        self._service = service
        self._js = js
        self._names = names
        self._batch_size = batch_size
        self._tracking = tracking or open_tracking(service)
        self.name = f"relay-{names.stream.lower()}"
        self.published_position = 0

    def checkpoint(self) -> int:
        return self._tracking.max_tracking_id(self.name) or 0

    async def run_forever(self) -> None:
        """Relays until cancelled, restarting from the checkpoint after a failure."""
        while True:
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("relay.failed", error=repr(error), restart_in=RESTART_DELAY_SECONDS)
                await asyncio.sleep(RESTART_DELAY_SECONDS)

    async def run(self) -> None:
        await ensure_stream(self._js, self._names)
        start = await asyncio.to_thread(self.checkpoint)
        self.published_position = start
        log.info("relay.started", checkpoint=start, stream=self._names.stream)
        feed = _NotificationFeed(self._service.recorder.subscribe(gt=start))
        try:
            while True:
                batch = await feed.next_batch(self._batch_size)
                await self._publish(batch)
                last = batch[-1].id
                await asyncio.to_thread(self._tracking.insert_tracking, Tracking(self.name, last))
                self.published_position = last
        finally:
            await asyncio.to_thread(feed.close)

    async def _publish(self, batch: list[Notification]) -> None:
        to_event = self._service.mapper.to_domain_event
        acks = []
        for notification in batch:
            event = cast(ConversationEvent, to_event(notification))
            item = envelope(event, notification.id)
            headers = event_headers(
                event_id=item.id,
                event_type=item.type,
                schema_version=item.schema_version,
                position=item.position,
                global_position=item.global_position,
                conversation_id=item.conversation_id,
            )
            subject = self._names.conversation_subject(item.conversation_id, item.type)
            acks.append(
                await self._js.publish_async(
                    subject, encode_envelope(item), headers=headers, stream=self._names.stream
                )
            )
        async with asyncio.timeout(self._ack_timeout):
            await asyncio.gather(*acks)


class _NotificationFeed:
    """Bridges the recorder's blocking subscription (a thread) to the event loop."""

    def __init__(self, subscription: Subscription[ApplicationRecorder]) -> None:
        self._subscription = subscription
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Notification | BaseException] = asyncio.Queue()
        self._slots = threading.Semaphore(MAX_IN_FLIGHT)
        self._thread = threading.Thread(target=self._pump, name="threadlog-relay", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        put: Callable[[Notification | BaseException], None] = self._queue.put_nowait
        try:
            for notification in self._subscription:
                self._slots.acquire()
                self._loop.call_soon_threadsafe(put, notification)
        except BaseException as error:
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                self._loop.call_soon_threadsafe(put, error)

    async def next_batch(self, size: int) -> list[Notification]:
        batch = [self._take(await self._queue.get())]
        while len(batch) < size and not self._queue.empty():
            batch.append(self._take(self._queue.get_nowait()))
        return batch

    def _take(self, item: Notification | BaseException) -> Notification:
        self._slots.release()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._subscription.stop()
        # Unblock the pump if it waits for a slot, then let it finish.
        for _ in range(MAX_IN_FLIGHT):
            self._slots.release()
        self._thread.join(timeout=5)
