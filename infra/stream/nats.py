"""NATS JetStream: connection, the THREADLOG stream, subjects and headers."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RawStreamMsg, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.errors import Error as JetStreamError

from threadlog.infra.settings import Settings
from threadlog.infra.store.envelope import EventEnvelope

log = structlog.get_logger(__name__)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_TYPE = "Threadlog-Type"
HEADER_SCHEMA_VERSION = "Threadlog-Schema-Version"
HEADER_POSITION = "Threadlog-Position"
HEADER_GLOBAL_POSITION = "Threadlog-Global-Position"
HEADER_CONVERSATION = "Threadlog-Conversation-Id"
HEADER_EXPECTED_STREAM = "Nats-Expected-Stream"

DUPLICATE_WINDOW_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """What the stream's last event says of itself (its headers)."""

    global_position: int
    conversation_id: str
    position: int


async def last_relayed(js: JetStreamContext, names: "StreamNames") -> RelayedEvent | None:
    """The stream's last event (None when it holds none, or none of threadlog's)."""
    try:
        state = (await js.stream_info(names.stream)).state
        if state.messages == 0:
            return None
        first = await next_event_message(js, names, state.first_seq)
        if first is None:
            return None
        last = await last_event_message(js, names, first, state.last_seq)
    except JetStreamError:  # no stream (yet), or no answer: the checkpoint decides
        return None
    headers = last.headers or {}
    global_position = headers.get(HEADER_GLOBAL_POSITION, "")
    position = headers.get(HEADER_POSITION, "")
    if not (global_position.isdigit() and position.isdigit()):
        return None
    return RelayedEvent(int(global_position), headers.get(HEADER_CONVERSATION, ""), int(position))


async def next_event_message(
    js: JetStreamContext, names: "StreamNames", sequence: int
) -> RawStreamMsg | None:
    """The stream's first event message at or after `sequence`; None when there is none."""
    try:
        return await js.get_msg(names.stream, sequence, subject=names.event_subjects, next=True)
    except NotFoundError:
        return None


async def last_event_message(
    js: JetStreamContext, names: "StreamNames", first: RawStreamMsg, last_sequence: int
) -> RawStreamMsg:
    """The stream's last event message still there, `first` being its first: deleted ones
    keep `last_seq` where it was, and a wildcard `last_by_subj` is not answered by every
    server version (2.9 is not), so it is searched for (log2(sequences) reads)."""
    last = await next_event_message(js, names, last_sequence)
    if last is not None:
        return last
    found, low, high = first, (first.seq or 0) + 1, last_sequence - 1
    while low <= high:
        middle = (low + high) // 2
        message = await next_event_message(js, names, middle)
        if message is None:
            high = middle - 1
        else:
            found, low = message, (message.seq or middle) + 1
    return found


@dataclass(frozen=True, kw_only=True)
class StreamNames:
    stream: str = "THREADLOG"
    prefix: str = "threadlog"
    replicas: int = 1  # copies JetStream keeps of each stream (THREADLOG_NATS_STREAM_REPLICAS)

    @classmethod
    def of(cls, settings: Settings) -> "StreamNames":
        return cls(
            stream=settings.nats_stream,
            prefix=settings.nats_subject_prefix,
            replicas=settings.nats_stream_replicas,
        )

    def conversation_subject(self, conversation_id: UUID | str, event_type: str) -> str:
        return f"{self.prefix}.conversation.{conversation_id}.{event_type}"

    def conversation_wildcard(self, conversation_id: UUID | str) -> str:
        return f"{self.prefix}.conversation.{conversation_id}.>"

    def live_subject(self, conversation_id: UUID | str) -> str:
        """Core NATS (not in the stream): events as they commit, for other processes'
        followers of the conversation (infra/stream/live.py)."""
        return f"{self.prefix}.live.{conversation_id}"

    @property
    def event_subjects(self) -> str:
        """What the stream stores: events only, never control traffic."""
        return f"{self.prefix}.conversation.>"

    @property
    def run_queue_stream(self) -> str:
        """The work queue of runs waiting for a worker (a stream of its own)."""
        return f"{self.stream}_RUNS"

    @property
    def run_queue_subject(self) -> str:
        return f"{self.prefix}.work.runs"

    def run_control_subject(self, run_id: str, action: str) -> str:
        return f"{self.prefix}.control.runs.{run_id}.{action}"

    def run_control_wildcard(self, action: str) -> str:
        return f"{self.prefix}.control.runs.*.{action}"

    @property
    def content_erased_subject(self) -> str:
        """An owner's content keys were erased: every process drops its cached keys."""
        return f"{self.prefix}.control.content.erased"


async def connect(
    url: str,
    *,
    name: str = "threadlog",
    no_echo: bool = False,
    on_gap: Callable[[], None] | None = None,
) -> NatsClient:
    """`no_echo`: this connection does not get its own publications back. `on_gap`:
    called when the connection drops and when it comes back (messages may be lost)."""

    async def on_error(error: Exception) -> None:
        log.warning("nats.error", error=str(error))

    async def on_disconnect() -> None:
        log.warning("nats.disconnected", connection=name)
        if on_gap is not None:
            on_gap()

    async def on_reconnect() -> None:
        log.info("nats.reconnected", connection=name)
        if on_gap is not None:
            on_gap()

    # A cluster: `nats://a:4222,nats://b:4222,…`, any node of which may be down at start.
    servers = [server.strip() for server in url.split(",") if server.strip()]
    client: NatsClient = await nats.connect(
        servers,
        name=name,
        no_echo=no_echo,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    return client


async def ensure_stream(js: JetStreamContext, names: StreamNames) -> None:
    """Creates the stream, or brings an existing one's settings up to date."""
    config = StreamConfig(
        name=names.stream,
        subjects=[names.event_subjects],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=names.replicas,
    )
    await apply_stream_config(js, config)


async def apply_stream_config(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates a stream, or brings an existing one's settings up to date."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            pass  # created concurrently by another process
    await js.update_stream(config)


def event_headers(item: EventEnvelope) -> dict[str, Any]:
    """The headers of an event's message: each repeats a field of the payload."""
    return {
        HEADER_MSG_ID: item.id,
        HEADER_TYPE: item.type,
        HEADER_SCHEMA_VERSION: str(item.schema_version),
        HEADER_POSITION: str(item.position),
        HEADER_GLOBAL_POSITION: str(item.global_position),
        HEADER_CONVERSATION: item.conversation_id,
    }
