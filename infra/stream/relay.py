"""The relay: committed events, in global order, onto the JetStream stream.

It takes the batches of the process's follower of the notification log (infra/store/
follower.py; one of its own when it is run alone), publishes each event with
`Nats-Msg-Id: <event id>` so JetStream drops the duplicates a crash between publish and
checkpoint would cause, awaits the acknowledgement, then records its checkpoint in
the store's tracking table, at most every `checkpoint_seconds` (and when it stops):
under a steady trickle of commits a checkpoint per batch was a transaction per token.
A checkpoint that trails costs nothing on restart: the relay starts after the later of
its checkpoint and the global position of the stream's last event. Only a batch's last
message asks for an acknowledgement: the server handles one connection's messages in
order, so its acknowledgement means every earlier one of the batch was handled too (an
acknowledgement per message cost more than building the messages). The envelopes are
built straight from the stored rows, as a replay's are (infra/store/envelope.py). What
it has not seen in a batch (its start, a batch it dropped while busy) it reads from the
store itself. Events this process committed it does not encode again: the live path
encoded them at the commit (`committed_at`).
A failure stops the loop loudly; it restarts from the checkpoint. When it starts, every
`repair_interval` seconds and after a NATS reconnection it compares the stream with the
store and republishes what the stream lost, in global order, before anything newer
(infra/stream/repair.py).
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from uuid import UUID

import structlog
from eventsourcing.persistence import Notification, Tracking, TrackingRecorder
from nats.js import JetStreamContext

from threadlog.domain.application import ConversationService
from threadlog.infra import tracing
from threadlog.infra.store.envelope import encode_envelope, stored_envelopes
from threadlog.infra.store.eventstore import StoredRow, open_tracking
from threadlog.infra.store.follower import Follower
from threadlog.infra.stream.live import Committed
from threadlog.infra.stream.nats import (
    HEADER_EXPECTED_STREAM,
    HEADER_MSG_ID,
    StreamNames,
    ensure_stream,
    event_headers,
    last_relayed,
)
from threadlog.infra.stream.repair import StreamRepair, republished_id
from threadlog.projections.runner import LogBatch, merge_batches

log = structlog.get_logger(__name__)

RESTART_DELAY_SECONDS = 1.0
MAX_QUEUED_BATCHES = 100  # older ones are dropped and read again from the store
# A publish whose ack never comes (lost while NATS restarted) must not stall the relay
# for good: past this the batch fails and is published again from the checkpoint
# (JetStream drops the copies by Nats-Msg-Id).
ACK_TIMEOUT_SECONDS = 10.0
CHECKPOINT_SECONDS = 1.0
REPAIR_INTERVAL_SECONDS = 30.0


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
        follower: Follower | None = None,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        committed_at: Callable[[int], Committed | None] | None = None,
        repair_interval: float = REPAIR_INTERVAL_SECONDS,
    ) -> None:
        """`follower`: the process's follower of the log (one of its own when None);
        `committed_at`: the live path's encoding of what this process committed, the
        same bytes as the rows' (built from the rows when it has none);
        `repair_interval`: how often the stream is compared with the store (0: only at
        start)."""
        self._committed_at = committed_at
        self._ack_timeout = ack_timeout
        self._checkpoint_seconds = checkpoint_seconds
        self._checkpointed = 0
        self._checkpointed_at = float("-inf")
        self._service = service
        self._js = js
        self._names = names
        self._batch_size = batch_size
        if tracking is None:
            tracking = open_tracking(service)
            if follower is not None:
                tracking = follower.tracking(tracking)  # one transaction, not two, a batch
        self._tracking = tracking
        self._follower = follower
        self.name = f"relay-{names.stream.lower()}"
        self.published_position = 0
        self._repair = StreamRepair(service, js, names, interval_seconds=repair_interval)
        self._republishing: tuple[str, int] | None = None  # (tag, up to global position)

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
        checkpoint = await asyncio.to_thread(self.checkpoint)
        self._checkpointed = checkpoint
        self.published_position = await self._resume_position(checkpoint)
        log.info(
            "relay.started",
            checkpoint=checkpoint,
            resume_after=self.published_position,
            stream=self._names.stream,
        )
        try:
            async with self._batches() as inbox:
                await self._repair_stream()
                # What was committed before the follower's first batch; later, its batches.
                stored = await asyncio.to_thread(self._service.recorder.max_notification_id)
                await self._catch_up(stored or 0)
                while True:
                    batches = await self._take(inbox)
                    if self._repair.due():
                        await self._repair_stream()
                    for batch in batches:
                        await self._consume(batch)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._checkpoint())

    async def _resume_position(self, checkpoint: int) -> int:
        """The later of the checkpoint and the stream's last event, if that event is the
        store's at its global position (a stream left from another store is not)."""
        last = await last_relayed(self._js, self._names)
        if last is None or last.global_position <= checkpoint:
            return checkpoint
        stored = await asyncio.to_thread(
            self._service.recorder.select_notifications,
            start=last.global_position,
            limit=1,
        )
        if (
            stored
            and stored[0].id == last.global_position
            and str(stored[0].originator_id) == last.conversation_id
            and stored[0].originator_version == last.position
        ):
            return last.global_position
        log.warning("relay.stream_not_of_this_store", checkpoint=checkpoint, last=repr(last))
        return checkpoint

    async def _take(self, inbox: "_Inbox") -> list[LogBatch]:
        """The next batches, or none when the stream is due a comparison with the store;
        meanwhile a checkpoint left for later is recorded when due."""
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # Python 3.11's `asyncio.timeout` can swallow a cancel that comes as it
                # expires: the relay would wait on, and whoever stops it with it.
                raise asyncio.CancelledError
            waits = [self._repair.interval_seconds] if self._repair.interval_seconds else []
            if self.published_position > self._checkpointed:
                due = self._checkpointed_at + self._checkpoint_seconds - time.monotonic()
                if due <= 0:
                    await self._checkpoint()
                    continue
                waits.append(due)
            try:
                async with asyncio.timeout(min(waits) if waits else None):
                    return await inbox.take(self._batch_size)
            except TimeoutError:
                if self._repair.due():
                    return []
                await self._checkpoint()

    async def _repair_stream(self) -> None:
        """Republishes, in global order, what the stream lost of what was relayed."""
        repair = await self._repair.check(self.published_position)
        if repair is None:
            return
        stored = await asyncio.to_thread(self._service.recorder.max_notification_id) or 0
        self._republishing = (repair.tag, stored)
        try:
            self.published_position = repair.resume_after
            await self._catch_up(stored)
        finally:
            self._republishing = None
        log.info("relay.stream_repaired", kind=repair.kind, up_to=self.published_position)

    @contextlib.asynccontextmanager
    async def _batches(self) -> AsyncIterator["_Inbox"]:
        inbox = _Inbox(asyncio.get_running_loop())
        follower = self._follower
        own = follower is None
        if follower is None:
            follower = Follower(self._service.recorder, batch_size=self._batch_size)
        remove = follower.add(inbox.put)
        if own:
            follower.start()
        try:
            yield inbox
        finally:
            remove()
            if own:
                await asyncio.to_thread(follower.stop)

    async def _consume(self, batch: LogBatch) -> None:
        """Relays what of `batch` is new, after the events before it not yet seen."""
        if batch.up_to <= self.published_position:
            return
        if batch.after > self.published_position:
            await self._catch_up(batch.after)
        fresh = [n for n in batch.notifications if n.id > self.published_position]
        for start in range(0, len(fresh), self._batch_size):
            await self._relay(fresh[start : start + self._batch_size])

    async def _catch_up(self, until: int) -> None:
        """Relays the stored events after the checkpoint up to `until`."""
        recorder = self._service.recorder
        while True:
            page = await asyncio.to_thread(
                recorder.select_notifications,
                start=self.published_position,
                limit=self._batch_size,
                stop=until,
                inclusive_of_start=False,
            )
            if not page:
                return
            await self._relay(page)
            if page[-1].id >= until:
                return

    async def _relay(self, notifications: Sequence[Notification]) -> None:
        """Publishes, awaits the acknowledgement, then records the checkpoint if due."""
        last = notifications[-1].id
        with tracing.span("relay.publish", events=len(notifications), last_position=last):
            await self._publish(notifications)
        self.published_position = last
        if time.monotonic() - self._checkpointed_at >= self._checkpoint_seconds:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        position = self.published_position
        if position > self._checkpointed:
            await asyncio.to_thread(self._tracking.insert_tracking, Tracking(self.name, position))
            self._checkpointed = position
        self._checkpointed_at = time.monotonic()

    async def _publish(self, batch: Sequence[Notification]) -> None:
        messages = [self._message(n) for n in batch]
        nc = self._js._nc  # core publishes on JetStream's own connection: one order
        for subject, payload, headers in messages[:-1]:
            await nc.publish(subject, payload, headers=headers)
        subject, payload, headers = messages[-1]
        del headers[HEADER_EXPECTED_STREAM]  # publish_async sets it from `stream`
        ack = await self._js.publish_async(
            subject, payload, headers=headers, stream=self._names.stream
        )
        async with asyncio.timeout(self._ack_timeout):
            await ack

    def _message(self, notification: Notification) -> tuple[str, bytes, dict[str, str]]:
        committed = self._committed_at(notification.id) if self._committed_at else None
        if committed is not None:
            headers = dict(committed.headers)
            subject = self._names.conversation_subject(committed.conversation_id, committed.type)
            payload = committed.stored
        else:
            conversation_id = UUID(str(notification.originator_id))
            row = StoredRow(
                notification.originator_version,
                notification.topic,
                notification.state,
                notification.id,
            )
            (item,) = stored_envelopes([row], conversation_id, self._service.mapper)
            headers = event_headers(item)
            subject = self._names.conversation_subject(item.conversation_id, item.type)
            payload = encode_envelope(item)
        if self._republishing is not None and notification.id <= self._republishing[1]:
            headers[HEADER_MSG_ID] = republished_id(headers[HEADER_MSG_ID], self._republishing[0])
        # The server refuses to store the message in any other stream.
        headers[HEADER_EXPECTED_STREAM] = self._names.stream
        return subject, payload, headers


class _Inbox:
    """The follower's batches (handed over in its thread), for the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._batches: deque[LogBatch] = deque()
        self._ready = asyncio.Event()

    def put(self, batch: LogBatch) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self._loop.call_soon_threadsafe(self._append, batch)

    def _append(self, batch: LogBatch) -> None:
        if len(self._batches) >= MAX_QUEUED_BATCHES:
            self._batches.popleft()  # read again from the store: a gap before the next
        self._batches.append(batch)
        self._ready.set()

    async def take(self, limit: int) -> list[LogBatch]:
        """The batches queued, joined where they follow each other (up to `limit` events)."""
        await self._ready.wait()
        self._ready.clear()
        batches = list(self._batches)
        self._batches.clear()
        return merge_batches(batches, limit)
