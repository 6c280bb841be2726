"""The firehose: every conversation's events, live, as Server-Sent Events (analysts).

`id:` is the event's global position: reconnect with `Last-Event-ID` (or `after`) to
resume exactly after the last event received. A client that falls behind by more
than `THREADLOG_STREAM_QUEUE_SIZE` events gets a final `event: error` saying so and
is disconnected (docs/audit.md).
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from threadlog.http.audit import TYPE_LIST_SCHEMA, parse_types
from threadlog.http.auth import ANALYST
from threadlog.http.conversations import MAX_POSITION, STREAM_INTERRUPTED, parse_cursor
from threadlog.http.errors import error_response
from threadlog.http.reads import reject_unknown_parameters
from threadlog.http.schemas import ErrorBody
from threadlog.infra import metrics
from threadlog.infra.runtime import Runtime
from threadlog.infra.store.auditlog import AuditLog
from threadlog.infra.stream.firehose import FellBehind, Firehose, Quiet, StreamFilter

log = structlog.get_logger(__name__)

_PARAMETERS = frozenset({"types", "agents", "after"})
LATEST = "latest"
# A position (18 digits: every one fits the store's 64-bit positions) or `latest`.
AFTER_PATTERN = r"^(latest|[0-9]{1,18})$"
"""`after=latest`: start after the newest stored event (only what happens from now on)."""


class StreamClients:
    """How many firehose clients this process serves: each holds a subscription (on
    PostgreSQL a LISTEN connection from the store's pool), so their number is capped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @classmethod
    def of(cls, request: Request[Any, Any, Any], limit: int) -> "StreamClients":
        state = request.app.state
        clients = state.get("stream_clients")
        if not isinstance(clients, StreamClients):
            clients = state["stream_clients"] = cls(limit)
        return clients


def _names(values: list[str] | None) -> frozenset[str]:
    return frozenset(p.strip() for v in values or () for p in v.split(",") if p.strip())


def _accepts_sse(request: Request[Any, Any, Any]) -> bool:
    accept = request.headers.get("accept", "")
    return not accept or "text/event-stream" in accept or "*/*" in accept


def fell_behind(item: FellBehind, last_sent: int) -> bytes:
    body = {
        "error": "fell_behind",
        "message": (
            f"the client fell behind: more than {item.queue_size} events waited for it; "
            f"reconnect with Last-Event-ID: {last_sent} to resume after the last event received"
        ),
        "last_event_id": last_sent,
    }
    return b"event: error\ndata: %s\n\n" % msgspec.json.encode(body)


async def _frames(
    runtime: Runtime, stream_filter: StreamFilter, after: int, clients: StreamClients
) -> AsyncIterator[bytes]:
    # Counted while the stream runs (a response never started holds nothing).
    clients.count += 1
    metrics.FIREHOSE_STREAMS.inc()
    try:
        async for frame in _follow(runtime, stream_filter, after):
            yield frame
    finally:
        clients.count -= 1
        metrics.FIREHOSE_STREAMS.dec()


async def _follow(
    runtime: Runtime, stream_filter: StreamFilter, after: int
) -> AsyncIterator[bytes]:
    settings = runtime.settings
    firehose = Firehose(runtime.service, queue_size=settings.stream_queue_size)
    last_sent = after
    yield b"retry: 1000\n\n"
    try:
        async for item in firehose.follow(
            stream_filter, after=after, heartbeat_seconds=settings.sse_heartbeat_seconds
        ):
            if isinstance(item, Quiet):
                yield b": heartbeat\n\n"
            elif isinstance(item, FellBehind):
                log.warning("stream.client_fell_behind", last_event_id=last_sent)
                yield fell_behind(item, last_sent)
            else:
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    item.global_position,
                    item.type.encode(),
                    item.payload,
                )
                last_sent = item.global_position
    except Exception as error:
        log.warning("stream.ended_by_error", error=repr(error))
        yield STREAM_INTERRUPTED


@get(
    "/v1/stream",
    summary="Every conversation's events, live (Server-Sent Events)",
    description=(
        "Streams stored events after the cursor (`Last-Event-ID` or `after`, a global "
        "position), then live ones, each with `id:` = its global position. Filters: "
        "`types` (event type names) and `agents`, each repeated or comma-separated. A "
        "client more than `THREADLOG_STREAM_QUEUE_SIZE` events behind gets "
        "`event: error` (`fell_behind`, with the `Last-Event-ID` to resume from) and is "
        "disconnected. Only `text/event-stream`: other `Accept` values are 406."
    ),
    response_description="text/event-stream",
    responses={406: ResponseSpec(data_container=ErrorBody, description="Not text/event-stream")},
    tags=["stream"],
    guards=ANALYST,
)
async def firehose(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    types: Annotated[
        list[str] | None,
        QueryParameter(description="Only these event types", schema_extra=TYPE_LIST_SCHEMA),
    ] = None,
    agents: Annotated[
        list[str] | None, QueryParameter(description="Only these agents' conversations")
    ] = None,
    after: Annotated[
        str | None,
        QueryParameter(
            pattern=AFTER_PATTERN,
            description="Global position to start after, or `latest`: live only",
        ),
    ] = None,
    last_event_id: Annotated[
        int | None,
        HeaderParameter(name="Last-Event-ID", ge=0, le=MAX_POSITION, description="Resume after it"),
    ] = None,
) -> Response[Any]:
    reject_unknown_parameters(request, _PARAMETERS)
    start = last_event_id
    if start is None and after == LATEST:
        start = await asyncio.to_thread(AuditLog(runtime.service).last_position)
    if start is None:
        start = parse_cursor("after", after) or 0
    stream_filter = StreamFilter(topics=parse_types("types", types), agents=_names(agents))
    if not _accepts_sse(request):
        return error_response(
            request, 406, "not_acceptable", "this route streams text/event-stream only"
        )
    clients = StreamClients.of(request, runtime.settings.stream_max_clients)
    if clients.count >= clients.limit:
        return error_response(
            request,
            503,
            "unavailable",
            f"this server already streams to {clients.limit} clients; retry shortly",
            headers={"Retry-After": "5"},
        )
    return Stream(
        _frames(runtime, stream_filter, start, clients),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
