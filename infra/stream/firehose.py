"""The firehose: every conversation's events in global order, live, for one client.

Each client follows the store's notification log from its cursor with its own
recorder subscription (stored events first, then new ones as they commit), read in a
thread. Matching events are pushed to the event loop through a bounded number of
slots: a client that reads slower than events arrive fills them, and is then told
it fell behind and disconnected (it resumes from the last global position it got),
so memory per client never grows past `queue_size` events.
"""

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast
from uuid import UUID

from eventsourcing.persistence import Notification

from threadlog.domain.application import ConversationService
from threadlog.domain.events import ConversationEvent
from threadlog.infra.store.auditlog import AuditLog, ConversationDirectory
from threadlog.infra.store.envelope import encode_envelope, envelope


@dataclass(frozen=True, slots=True)
class StreamedEvent:
    global_position: int
    type: str
    payload: bytes  # the event's wire JSON (EventEnvelope)


@dataclass(frozen=True, slots=True)
class Quiet:
    """Nothing arrived for a heartbeat interval."""


@dataclass(frozen=True, slots=True)
class FellBehind:
    """The client's queue filled: it is disconnected."""

    queue_size: int


@dataclass(frozen=True, kw_only=True)
class StreamFilter:
    topics: tuple[str, ...] = ()
    agents: frozenset[str] = frozenset()


_Item = StreamedEvent | FellBehind | BaseException


class Firehose:
    def __init__(self, service: ConversationService, *, queue_size: int) -> None:
        self._service = service
        self._queue_size = queue_size

    async def follow(
        self, stream_filter: StreamFilter, *, after: int, heartbeat_seconds: float
    ) -> AsyncIterator[StreamedEvent | Quiet | FellBehind]:
        """Events after global position `after`; ends after yielding FellBehind."""
        directory = AuditLog(self._service).directory if stream_filter.agents else None
        pump = _Pump(self._service, stream_filter, directory, after, self._queue_size)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(pump.take(), heartbeat_seconds)
                except TimeoutError:
                    yield Quiet()
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, FellBehind):
                    return
        finally:
            pump.stop()  # its thread ends at its next notification check


class _Pump:
    """Reads the subscription in a thread; at most `size` items wait for the client."""

    def __init__(
        self,
        service: ConversationService,
        stream_filter: StreamFilter,
        directory: ConversationDirectory | None,
        after: int,
        size: int,
    ) -> None:
        self._service = service
        self._filter = stream_filter
        self._directory = directory
        self._size = size
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._slots = threading.Semaphore(size)
        self._subscription = service.recorder.subscribe(gt=after, topics=stream_filter.topics)
        self._thread = threading.Thread(target=self._run, name="threadlog-firehose", daemon=True)
        self._thread.start()

    async def take(self) -> _Item:
        item = await self._queue.get()
        if isinstance(item, StreamedEvent):
            self._slots.release()
        return item

    def _put(self, item: _Item) -> None:
        put: Callable[[_Item], None] = self._queue.put_nowait
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self._loop.call_soon_threadsafe(put, item)

    def _run(self) -> None:
        try:
            for notification in self._subscription:
                item = self._streamed(notification)
                if item is None:
                    continue
                if not self._slots.acquire(blocking=False):
                    self._put(FellBehind(self._size))
                    return
                self._put(item)
        except BaseException as error:
            self._put(error)
        finally:
            self._subscription.stop()

    def _streamed(self, notification: Notification) -> StreamedEvent | None:
        if self._directory is not None:
            started = self._directory.get(UUID(str(notification.originator_id)))
            if started is None or started[1] not in self._filter.agents:
                return None
        event = cast(ConversationEvent, self._service.mapper.to_domain_event(notification))
        item = envelope(event, notification.id)
        return StreamedEvent(notification.id, item.type, encode_envelope(item))

    def stop(self) -> None:
        self._subscription.stop()
