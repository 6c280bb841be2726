"""Benchmark 2: replaying a long conversation over SSE from position 0.

One conversation of N events (a run's tokens) is stored on PostgreSQL; `threadlog
serve` serves it from a process of its own (as its clients meet it: a client's work
does not share the server's GIL). A replay is timed from the
request until the N-th `id:` frame has arrived and been parsed. The baseline, in the
same run, is reading the same N events straight from the store with `EventLog.read`
as domain events, and building and encoding their envelopes (`envelope_of`,
`encode_envelope`), timed after each read: the domain path, which a replay no longer
takes (it serves the stored rows: `stored_envelopes` in infra/store/envelope.py).

A replay keeps the frames it served (infra/stream/frames.py), so the same server's
next replay sends them as they are: the server measured first is such a server,
warmed by one replay. A first replay, which reads the store, is measured next on a
server that keeps none (`THREADLOG_REPLAY_CACHE_MB=0`), each with its direct reads.
"""

import dataclasses
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx

from bench.access import OWNER
from bench.measure import Sample, progress, ratios
from bench.processes import stream_of, threadlog_server
from bench.profile import Profile, sample_while
from bench.servers import Servers
from tests.support import ADMIN_KEY
from threadlog.domain.application import ConversationService
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import open_content_keys
from threadlog.infra.store.envelope import encode_envelope, envelope_of
from threadlog.infra.store.eventstore import EventLog, open_service

# Small enough per transaction that a save never waits on a stuck pipeline (see token_write).
BUILD_BATCH = 200
CATCH_UP_TIMEOUT_SECONDS = 120.0
TARGET_MS = 100.0  # DESIGN.md, Targets


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    events: int
    repetitions: int
    profile_seconds: float = 0  # py-spy on the server replaying, when the target is missed


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    events: int
    stream_bytes: int
    sse_ms: Sample  # a replay of frames an earlier replay kept
    first_ms: Sample  # a first replay: the server reads and encodes the stored events
    read_ms: Sample
    encode_ms: Sample  # envelopes of the events read, built and encoded
    ratio: Sample  # SSE (kept frames) / direct read, per repetition
    first_ratio: Sample  # SSE (first replay) / direct read, per repetition
    profile: Profile | None = None  # the server replaying again and again

    @property
    def kept_met(self) -> bool:
        return self.sse_ms.median < TARGET_MS

    @property
    def first_met(self) -> bool:
        return self.first_ms.median < TARGET_MS

    @property
    def target_met(self) -> bool:
        return self.kept_met and self.first_met


class _FrameCounter:
    """Counts complete SSE frames that carry an `id:`, remembering the last id."""

    def __init__(self) -> None:
        self._partial = b""
        self.frames = 0
        self.last_id = 0
        self.bytes = 0

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        *frames, self._partial = (self._partial + chunk).split(b"\n\n")
        for frame in frames:
            if frame.startswith(b"id: "):
                self.frames += 1
                self.last_id = int(frame[4 : frame.index(b"\n")])


def run_replay(servers: Servers, config: ReplayConfig) -> ReplayResult:
    url = servers.databases.create()
    keys = open_content_keys(Settings(database_url=url))
    service = open_service(Settings(database_url=url), keys)
    try:
        progress(f"sse replay: storing a conversation of {config.events} events")
        conversation_id = _build_conversation(service, config.events)
        kept = _replays(servers, url, service, conversation_id, config, "frames kept")
        # One server at a time: each holds dozens of connections, and the embedded
        # PostgreSQL takes 100. This one serves the replays only: no relay, projections
        # or background process (the first one ran them on the same store).
        first = _replays(
            servers,
            url,
            service,
            conversation_id,
            config,
            "first replays",
            REPLAY_CACHE_MB="0",
            BACKGROUND_PROCESS="false",
            RELAY="false",
            PROJECTIONS="false",
        )
    finally:
        service.close()
        keys.close()
        servers.databases.drop(url)
    sse_ms, first_ms = kept.replay_ms, first.replay_ms
    return ReplayResult(
        events=config.events,
        stream_bytes=kept.stream_bytes,
        sse_ms=sse_ms,
        first_ms=first_ms,
        read_ms=Sample.of([*kept.read_ms.values, *first.read_ms.values]),
        encode_ms=Sample.of([*kept.encode_ms.values, *first.encode_ms.values]),
        ratio=ratios(sse_ms, kept.read_ms),
        first_ratio=ratios(first_ms, first.read_ms),
        profile=first.profile,
    )


@dataclass(frozen=True, kw_only=True)
class _Replays:
    """One server's replays, and the direct reads measured alongside them."""

    replay_ms: Sample
    read_ms: Sample
    encode_ms: Sample
    stream_bytes: int
    profile: Profile | None


def _replays(
    servers: Servers,
    url: str,
    service: ConversationService,
    conversation_id: UUID,
    config: ReplayConfig,
    label: str,
    **settings: str,
) -> _Replays:
    """Replays on a `threadlog serve` of its own (as clients meet it: the client's
    parsing does not share the server's GIL), with `settings`; a profile of it
    replaying back to back when their median misses the target."""
    with tempfile.TemporaryDirectory(prefix="threadlog-bench-") as data_dir:
        server = threadlog_server(servers, url, Path(data_dir), **settings)
        try:
            app = server.start("/health/ready")
            with _client(app.base_url) as client:
                _wait_until_caught_up(client, service.recorder.max_notification_id() or 0)
                measured = _measure(client, service, conversation_id, config, label)
                profile = None
                if measured.replay_ms.median >= TARGET_MS and config.profile_seconds:
                    profile = _profile(client, app.pid, conversation_id, config, label)
                return dataclasses.replace(measured, profile=profile)
        finally:
            server.stop()
            servers.release_stream(stream_of(server))


def _build_conversation(service: ConversationService, events: int) -> UUID:
    cause = Cause(actor="user:bench", correlation_id=uuid.uuid4().hex)
    started = service.start_conversation(
        owner=OWNER, agent="assistant", title="bench", metadata={}, cause=cause
    )
    posted = service.post_message(
        started.value.id,
        content="Tell me a story.",
        client_message_id=None,
        model="bench",
        cause=cause,
    )
    conversation = service.get_conversation(started.value.id)
    seal = service.seal_for(OWNER)  # as the run executor seals each delta
    run_cause = Cause(
        actor="agent:assistant",
        correlation_id=cause.correlation_id,
        causation_id=posted.value.run_id,
    )
    while conversation.version < events:
        conversation.stream_token(
            run_id=posted.value.run_id,
            part=0,
            delta=seal(f" token{conversation.version}"),
            cause=run_cause,
        )
        if len(conversation.pending_events) >= BUILD_BATCH or conversation.version == events:
            service.append(conversation.collect_events())
    return conversation.id


def _wait_until_caught_up(client: httpx.Client, target: int) -> None:
    """Waits until the relay and every projection have processed the whole store.

    Otherwise they would compete with the replay for the CPU; /health/ready reports both.
    """
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
    while not _caught_up(client.get("/health/ready").json().get("checks", {}), target):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the relay or projections did not reach position {target}")
        time.sleep(0.1)


def _caught_up(checks: dict[str, str], target: int) -> bool:
    relay = int(checks.get("relay_position", target))
    lags = [int(value) for key, value in checks.items() if key.endswith("_lag")]
    return relay >= target and not any(lags)


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}, timeout=60)


def _measure(
    client: httpx.Client,
    service: ConversationService,
    conversation_id: UUID,
    config: ReplayConfig,
    label: str,
) -> _Replays:
    event_log = EventLog(service)
    path = f"/v1/conversations/{conversation_id}/events"
    sse: list[float] = []
    reads: list[tuple[float, float]] = []
    # Warm both paths (connections, prepared statements, caches; the frames a server
    # keeps) before measuring.
    _replay(client, path, config.events)
    _read(event_log, conversation_id, config.events)
    for repetition in range(config.repetitions):
        progress(f"sse replay, {label}: repetition {repetition + 1}/{config.repetitions}")
        if repetition % 2:
            reads.append(_read(event_log, conversation_id, config.events))
            sse.append(_replay(client, path, config.events)[0])
        else:
            sse.append(_replay(client, path, config.events)[0])
            reads.append(_read(event_log, conversation_id, config.events))
    return _Replays(
        replay_ms=Sample.of(s * 1000 for s in sse),
        read_ms=Sample.of(read * 1000 for read, _ in reads),
        encode_ms=Sample.of(encode * 1000 for _, encode in reads),
        stream_bytes=_replay(client, path, config.events)[1],
        profile=None,
    )


def _profile(
    client: httpx.Client, pid: int, conversation_id: UUID, config: ReplayConfig, label: str
) -> Profile | None:
    """The server replaying the conversation back to back, sampled."""
    progress(f"sse replay, {label}: py-spy sampling the server while it replays")
    path = f"/v1/conversations/{conversation_id}/events"
    return sample_while(
        pid, config.profile_seconds, lambda: _replay(client, path, config.events), rate=250
    )


def _replay(client: httpx.Client, path: str, events: int) -> tuple[float, int]:
    """Seconds until the last event's frame arrived, and the bytes received until then."""
    counter = _FrameCounter()
    started = time.perf_counter()
    with client.stream("GET", path, headers={"accept": "text/event-stream"}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            counter.feed(chunk)
            if counter.frames >= events:
                break
    seconds = time.perf_counter() - started
    if counter.frames != events or counter.last_id != events:
        raise RuntimeError(f"replay got {counter.frames} frames ending at {counter.last_id}")
    return seconds, counter.bytes


def _read(event_log: EventLog, conversation_id: UUID, events: int) -> tuple[float, float]:
    """Seconds to read the events, and then to build and encode their envelopes."""
    started = time.perf_counter()
    logged = event_log.read(conversation_id)
    read = time.perf_counter()
    encoded = [encode_envelope(envelope_of(item)) for item in logged]
    seconds = time.perf_counter() - read
    if len(logged) != events or len(encoded) != events:
        raise RuntimeError(f"read {len(logged)} events, expected {events}")
    return read - started, seconds
