"""`python -m bench.sse_clients`: many SSE clients in one process, apart from the server.

Reads a job (JSON) on standard input, opens every stream, prints `ready` on standard
output once every stream is open and following, then:

- a load job: records, per paced token (infra/agents/paced_model.py), the latency from its
  due time to its arrival, until each stream has seen its run's end or the deadline;
- an idle job: holds the streams for `hold_seconds`, counting heartbeats.

and prints its result (JSON) on standard output. The benchmark that started it
measures the server meanwhile.
"""

import asyncio
import datetime
import functools
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg

from bench.sse_client import Frame, HTTPStatusError, stream_sse
from threadlog.infra.agents.paced_model import read_token
from threadlog.infra.stream.nats import HEADER_POSITION

RUN_ENDINGS = frozenset({"RunCompleted", "RunFailed", "RunCancelled", "RunInterrupted"})
READY_TIMEOUT_SECONDS = 120.0


class Target(msgspec.Struct, frozen=True):
    host: str
    port: int
    headers: dict[str, str]


class LoadJob(msgspec.Struct, frozen=True, tag="load"):
    target: Target
    paths: list[str]  # one per client
    tokens: int  # per run
    deadline_seconds: float  # from `ready` until every client must be done
    connect_concurrency: int = 50
    # When set, also subscribes to the tokens' NATS subjects to time when each got there.
    nats_url: str | None = None
    nats_subject: str | None = None


class IdleJob(msgspec.Struct, frozen=True, tag="idle"):
    target: Target
    paths: list[str]
    hold_seconds: float
    connect_concurrency: int = 50


class LoadOutcome(msgspec.Struct, frozen=True):
    latencies_us: list[int]  # due → received by the client, per token received
    # For the same tokens: due → the stored event's timestamp (when the run executor made
    # it), and due → on NATS (-1: not seen there); empty when not measured.
    created_us: list[int]
    on_nats_us: list[int]
    clients: int
    tokens_expected: int
    tokens_received: int  # distinct tokens received, over all clients
    duplicates: int
    out_of_order: int
    missing: int  # tokens never received before the run's end or the deadline
    unfinished: int  # clients whose run had not ended by the deadline
    errors: list[str]
    first_due_ns: int
    last_arrival_ns: int
    cpu_seconds: float  # this process's, from start to the outcome


class IdleOutcome(msgspec.Struct, frozen=True):
    clients: int
    opened: int
    open_at_end: int  # streams the server had not closed when the hold ended
    heartbeats: list[int]  # per opened stream
    errors: list[str]


Job = LoadJob | IdleJob


class _Token(msgspec.Struct):
    delta: str


class _TokenEvent(msgspec.Struct):
    data: _Token
    timestamp: str = ""
    position: int = 0


class _Stages:
    """When each token reached NATS, by (conversation id, position): on NATS a token's
    text is sealed (docs/erasure.md), so it is matched by its position header."""

    def __init__(self) -> None:
        self.on_nats: dict[tuple[str, int], int] = {}
        self.created_us: list[int] = []
        self.keys: list[tuple[str, int, int]] = []  # (conversation, position, due) per latency

    async def on_message(self, message: Msg) -> None:
        arrived = time.time_ns()
        position = (message.headers or {}).get(HEADER_POSITION)
        if position is not None:
            self.on_nats[(message.subject.split(".")[-2], int(position))] = arrived

    def on_nats_us(self) -> list[int]:
        return [
            (self.on_nats[(c, i)] - due) // 1000 if (c, i) in self.on_nats else -1
            for c, i, due in self.keys
        ]


_token_event = msgspec.json.Decoder(_TokenEvent)


class _LoadStream:
    """One client's bookkeeping: which paced tokens came, when, in what order."""

    def __init__(
        self, conversation: str, tokens: int, latencies: list[int], stages: _Stages | None
    ) -> None:
        self.conversation = conversation
        self.seen = bytearray(tokens)
        self.latencies = latencies
        self.stages = stages
        self.following = asyncio.Event()
        self.duplicates = 0
        self.out_of_order = 0
        self.last_index = -1
        self.ended = False
        self.error: str | None = None
        self.first_due_ns = 0
        self.last_arrival_ns = 0

    def on_frames(self, frames: list[Frame], arrived: int) -> bool:
        for frame in frames:
            if frame.id is not None:
                self.following.set()  # a stored event or the ready frame: it follows live
            if frame.event == "TokenStreamed":
                self._token(frame.data, arrived)
            elif frame.event in RUN_ENDINGS:
                if frame.event != "RunCompleted":
                    self.error = f"run ended with {frame.event}"
                self.ended = True
                return True
            elif frame.event == "error":
                self.error = f"stream error: {frame.data[:200]!r}"
                return True
        return False

    def _token(self, data: bytes, arrived: int) -> None:
        event = _token_event.decode(data)
        token = read_token(event.data.delta)
        if token is None:
            return
        index, due_ns = token
        if self.seen[index]:
            self.duplicates += 1
            return
        self.seen[index] = 1
        if index < self.last_index:
            self.out_of_order += 1
        self.last_index = max(self.last_index, index)
        self.latencies.append((arrived - due_ns) // 1000)
        if self.stages is not None:
            created = datetime.datetime.fromisoformat(event.timestamp).timestamp()
            self.stages.created_us.append(round(created * 1e6) - due_ns // 1000)
            self.stages.keys.append((self.conversation, event.position, due_ns))
        if index == 0:
            self.first_due_ns = due_ns
        self.last_arrival_ns = arrived


async def _start_all(
    starts: list[Callable[[], Coroutine[Any, Any, None]]],
    opened: list[asyncio.Event],
    concurrency: int,
) -> list[asyncio.Task[None]]:
    """Starts the streams `concurrency` at a time, each batch once the previous one is
    open (or failed); returns their tasks."""
    tasks: list[asyncio.Task[None]] = []
    for first in range(0, len(starts), concurrency):
        batch = [asyncio.create_task(start()) for start in starts[first : first + concurrency]]
        tasks += batch
        events = opened[first : first + concurrency]
        await asyncio.wait_for(
            asyncio.gather(
                *(_opened(event, task) for event, task in zip(events, batch, strict=True))
            ),
            READY_TIMEOUT_SECONDS,
        )
    return tasks


async def _opened(event: asyncio.Event, task: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _conversation_of(path: str) -> str:
    """The conversation id of `/v1/conversations/{id}/events` or `/c/{id}`."""
    parts = path.split("/")
    return parts[3] if path.startswith("/v1/") else parts[-1]


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


async def run_load(job: LoadJob) -> LoadOutcome:
    latencies: list[int] = []
    stages = _Stages() if job.nats_url and job.nats_subject else None
    streams = [
        _LoadStream(_conversation_of(path), job.tokens, latencies, stages) for path in job.paths
    ]
    target = job.target
    nc = None
    if stages is not None and job.nats_url and job.nats_subject:
        nc = await nats.connect(job.nats_url)
        await nc.subscribe(job.nats_subject, cb=stages.on_message, pending_msgs_limit=1 << 20)

    async def follow(stream: _LoadStream, path: str) -> None:
        try:
            await stream_sse(target.host, target.port, path, target.headers, stream.on_frames)
        except (OSError, HTTPStatusError, asyncio.IncompleteReadError) as error:
            stream.error = repr(error)
        finally:
            stream.following.set()

    tasks = await _start_all(
        [functools.partial(follow, s, p) for s, p in zip(streams, job.paths, strict=True)],
        [s.following for s in streams],
        job.connect_concurrency,
    )
    _ready()
    _, pending = await asyncio.wait(tasks, timeout=job.deadline_seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if nc is not None:
        await nc.close()
    received = sum(sum(s.seen) for s in streams)
    return LoadOutcome(
        latencies_us=latencies,
        created_us=stages.created_us if stages else [],
        on_nats_us=stages.on_nats_us() if stages else [],
        clients=len(streams),
        tokens_expected=job.tokens * len(streams),
        tokens_received=received,
        duplicates=sum(s.duplicates for s in streams),
        out_of_order=sum(s.out_of_order for s in streams),
        missing=job.tokens * len(streams) - received,
        unfinished=sum(not s.ended and s.error is None for s in streams),
        errors=[s.error for s in streams if s.error is not None],
        first_due_ns=min((s.first_due_ns for s in streams if s.first_due_ns), default=0),
        last_arrival_ns=max((s.last_arrival_ns for s in streams), default=0),
        cpu_seconds=time.process_time(),
    )


class _IdleStream:
    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.was_opened = False
        self.heartbeats = 0
        self.closed_by_server = False
        self.error: str | None = None

    def on_open(self) -> None:
        self.was_opened = True
        self.opened.set()

    def on_frames(self, frames: list[Frame], arrived: int) -> bool:
        self.heartbeats += sum(frame.comment for frame in frames)
        return False


async def run_idle(job: IdleJob) -> IdleOutcome:
    streams = [_IdleStream() for _ in job.paths]
    target = job.target

    async def hold(stream: _IdleStream, path: str) -> None:
        try:
            await stream_sse(
                target.host,
                target.port,
                path,
                target.headers,
                stream.on_frames,
                on_open=stream.on_open,
            )
            stream.closed_by_server = True
        except (OSError, HTTPStatusError, asyncio.IncompleteReadError) as error:
            stream.error = repr(error)
            stream.closed_by_server = True
        finally:
            stream.opened.set()

    tasks = await _start_all(
        [functools.partial(hold, s, p) for s, p in zip(streams, job.paths, strict=True)],
        [s.opened for s in streams],
        job.connect_concurrency,
    )
    _ready()
    await asyncio.sleep(job.hold_seconds)
    open_at_end = sum(s.was_opened and not s.closed_by_server for s in streams)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return IdleOutcome(
        clients=len(streams),
        opened=sum(s.was_opened for s in streams),
        open_at_end=open_at_end,
        heartbeats=[s.heartbeats for s in streams if s.was_opened],
        errors=[s.error for s in streams if s.error is not None],
    )


def main() -> None:
    job = msgspec.json.decode(sys.stdin.buffer.read(), type=Job)
    started = time.perf_counter()
    outcome: LoadOutcome | IdleOutcome
    outcome = asyncio.run(run_load(job)) if isinstance(job, LoadJob) else asyncio.run(run_idle(job))
    sys.stdout.write(msgspec.json.encode(outcome).decode() + "\n")
    sys.stderr.write(f"sse_clients: done in {time.perf_counter() - started:.1f} s\n")


if __name__ == "__main__":
    main()
