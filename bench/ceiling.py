"""The load benchmark's ceiling: SSE served straight from NATS, no store in the path.

`python -m bench.ceiling serve PORT NATS_URL PREFIX` runs a minimal SSE server on the
same HTTP stack as threadlog (Litestar under uvicorn, one process): `GET /c/{id}`
subscribes to `PREFIX.conversation.{id}.>` (as threadlog's feed does), sends an
`id: 0` frame once subscribed, then forwards each message as a frame, with a
heartbeat comment when quiet.

`python -m bench.ceiling publish` (a job as JSON on standard input) publishes, for
each conversation, T paced tokens at R per second straight to NATS, shaped like the
events threadlog's relay publishes (headers, an EventEnvelope of a TokenStreamed
event, stamped as infra/agents/paced_model.py stamps them), then a RunCompleted.
"""

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec
import nats
import nats.errors
import uvicorn
from litestar import Litestar, get
from litestar.response import Stream
from nats.aio.client import Client as NatsClient

from threadlog.infra.agents.paced_model import paced_token
from threadlog.infra.store.envelope import EventEnvelope
from threadlog.infra.stream.nats import HEADER_POSITION, HEADER_TYPE

HEARTBEAT_SECONDS = 15.0
PENDING_LIMIT = 65536


class PublishJob(msgspec.Struct, frozen=True):
    nats_url: str
    prefix: str
    conversations: list[str]
    tokens: int
    tokens_per_second: float


def _subject(prefix: str, conversation_id: str, event_type: str) -> str:
    return f"{prefix}.conversation.{conversation_id}.{event_type}"


def ceiling_app(nc_holder: list[NatsClient], prefix: str) -> Litestar:
    async def frames(conversation_id: UUID) -> AsyncIterator[bytes]:
        subscription = await nc_holder[0].subscribe(
            _subject(prefix, str(conversation_id), ">"), pending_msgs_limit=PENDING_LIMIT
        )
        try:
            yield b"retry: 1000\n\nid: 0\nevent: ready\ndata: {}\n\n"
            while True:
                try:
                    message = await subscription.next_msg(timeout=HEARTBEAT_SECONDS)
                except nats.errors.TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                headers = message.headers or {}
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                    headers[HEADER_POSITION].encode(),
                    headers[HEADER_TYPE].encode(),
                    message.data,
                )
        finally:
            await subscription.unsubscribe()

    @get("/c/{conversation_id:uuid}")
    async def follow(conversation_id: UUID) -> Stream:
        return Stream(
            frames(conversation_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([follow, health])


def serve(port: int, nats_url: str, prefix: str) -> None:
    holder: list[NatsClient] = []

    async def connect(app: Litestar) -> None:
        holder.append(await nats.connect(nats_url))

    async def close(app: Litestar) -> None:
        await holder[0].drain()

    app = ceiling_app(holder, prefix)
    app.on_startup.append(connect)
    app.on_shutdown.append(close)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _envelope(
    conversation_id: str, position: int, event_type: str, data: dict[str, object]
) -> bytes:
    # The size and shape of what the relay publishes (ids and hashes included).
    return msgspec.json.encode(
        EventEnvelope(
            id=f"{position:032x}",
            type=event_type,
            conversation_id=conversation_id,
            position=position,
            global_position=position,
            timestamp="2026-01-01T00:00:00.000000+00:00",
            actor="agent:assistant",
            correlation_id="0" * 32,
            causation_id="run-" + "0" * 28,
            schema_version=1,
            prev_hash="0" * 64,
            hash="0" * 64,
            data=data,
        )
    )


async def _publish_one(
    nc: NatsClient, job: PublishJob, conversation_id: str, start_ns: int
) -> None:
    interval_ns = 1e9 / job.tokens_per_second
    run = {"run_id": "run-" + "0" * 28, "part": 0}
    for index in range(job.tokens):
        due_ns = start_ns + round(index * interval_ns)
        wait_ns = due_ns - time.time_ns()
        if wait_ns > 0:
            await asyncio.sleep(wait_ns / 1e9)
        position = index + 1
        await nc.publish(
            _subject(job.prefix, conversation_id, "TokenStreamed"),
            _envelope(
                conversation_id,
                position,
                "TokenStreamed",
                {**run, "delta": paced_token(index, due_ns)},
            ),
            headers={HEADER_POSITION: str(position), HEADER_TYPE: "TokenStreamed"},
        )
    end = job.tokens + 1
    await nc.publish(
        _subject(job.prefix, conversation_id, "RunCompleted"),
        _envelope(conversation_id, end, "RunCompleted", {"run_id": run["run_id"]}),
        headers={HEADER_POSITION: str(end), HEADER_TYPE: "RunCompleted"},
    )


async def publish(job: PublishJob) -> None:
    nc = await nats.connect(job.nats_url)
    try:
        # Runs start at spread-out moments, as the server's do (one POST after another).
        start_ns = time.time_ns()
        spread_ns = 1e9 / job.tokens_per_second / len(job.conversations)
        await asyncio.gather(
            *(
                _publish_one(nc, job, c, start_ns + round(i * spread_ns))
                for i, c in enumerate(job.conversations)
            )
        )
        await nc.flush()
    finally:
        await nc.drain()


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"] and len(argv) == 4:
        serve(int(argv[1]), argv[2], argv[3])
    elif argv == ["publish"]:
        asyncio.run(publish(msgspec.json.decode(sys.stdin.buffer.read(), type=PublishJob)))
    else:
        sys.exit("usage: python -m bench.ceiling serve PORT NATS_URL PREFIX | publish")


if __name__ == "__main__":
    main(sys.argv[1:])
