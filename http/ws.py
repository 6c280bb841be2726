"""A conversation over one WebSocket: its event stream out, commands in.

Out: every event after `?after=<position>` as a text frame holding exactly the JSON
of the SSE `data:` (the same ConversationFeed: subscribe, catch up, live, gap-fill).
In: `{"type": "message", "content", "client_message_id"?}` posts like
`POST …/messages` (busy policies included) and `{"type": "cancel", "run_id"}`
cancels like `POST /v1/runs/{id}/cancel`. Each command (with an optional `id` the
reply echoes) gets one reply frame, `ack` or `error` (the HTTP status and error
code). A command's reply is sent before any event it caused.
"""

import asyncio
import contextlib
import uuid
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import WS_1008_POLICY_VIOLATION, WS_1011_INTERNAL_ERROR

from threadlog.domain.errors import ConversationNotFound, DomainError
from threadlog.domain.events import Cause
from threadlog.http.auth import identity, requires
from threadlog.http.conversations import accept_message, parse_cursor
from threadlog.http.errors import DOMAIN_STATUS, HTTP_CODES, UNAVAILABLE
from threadlog.http.schemas import ClientMessageId
from threadlog.infra import metrics
from threadlog.infra.runtime import Runtime
from threadlog.infra.stream.feed import FeedEvent

log = structlog.get_logger(__name__)

CommandId = Annotated[str, msgspec.Meta(max_length=200)]
RunIdText = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
STREAM_INTERRUPTED = "the stream was interrupted; reconnect with after=<last position>"


class SendMessage(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="message"
):
    content: str
    client_message_id: ClientMessageId | None = None
    id: CommandId | None = None


class CancelRun(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="cancel"
):
    run_id: RunIdText
    id: CommandId | None = None


Command = SendMessage | CancelRun
_commands = msgspec.json.Decoder(Command)


class _CommandRef(msgspec.Struct):
    """Only a frame's `id`, so that even a frame refused as invalid gets it back."""

    id: CommandId | None = None


_command_refs = msgspec.json.Decoder(_CommandRef)


def _command_id(frame: str | bytes) -> str | None:
    try:
        return _command_refs.decode(frame).id
    except msgspec.DecodeError:
        return None


class Ack(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="ack"):
    command: str
    run_id: str
    id: str | None = None
    message_id: str | None = None
    position: int | None = None
    global_position: int | None = None
    duplicate: bool | None = None
    queued: bool | None = None
    status: str | None = None


class ErrorFrame(msgspec.Struct, frozen=True, kw_only=True, tag="error"):
    status: int
    code: str
    message: str
    id: str | None = None


Reply = Ack | ErrorFrame
_encoder = msgspec.json.Encoder()


def error_frame(error: Exception, command_id: str | None = None) -> ErrorFrame:
    """The HTTP status and error code the same failure gets on the HTTP routes."""
    if isinstance(error, DomainError):
        status = DOMAIN_STATUS.get(type(error), 400)
        return ErrorFrame(status=status, code=error.code, message=str(error), id=command_id)
    if isinstance(error, msgspec.DecodeError):  # ValidationError included
        return ErrorFrame(
            status=400, code="validation_error", message=f"invalid frame: {error}", id=command_id
        )
    if isinstance(error, HTTPException) and error.status_code < 500:
        code = HTTP_CODES.get(error.status_code, "error")
        return ErrorFrame(
            status=error.status_code, code=code, message=str(error.detail), id=command_id
        )
    if isinstance(error, UNAVAILABLE):
        log.warning("ws.dependency_unavailable", error=repr(error))
        return ErrorFrame(
            status=503,
            code="unavailable",
            message="a dependency (event store or NATS) is unavailable; retry shortly",
            id=command_id,
        )
    log.exception("ws.unhandled_error", error=repr(error))
    return ErrorFrame(
        status=500,
        code="internal_error",
        message="the server failed to handle the command",
        id=command_id,
    )


def _too_large(size: int, limit: int) -> ErrorFrame:
    """The same limit as a request body's (THREADLOG_MAX_REQUEST_BYTES)."""
    message = f"the frame is {size} bytes; the limit is {limit} bytes"
    return ErrorFrame(status=413, code="payload_too_large", message=message)


def _frame_data(message: Any) -> str | bytes:
    """A received frame's text, or its bytes (a binary frame is decoded as JSON too)."""
    data = message.get("text") or message.get("bytes") or b""
    return data if isinstance(data, str | bytes) else b""


class ConversationSocket:
    """One client's connection to one conversation."""

    def __init__(self, socket: WebSocket[Any, Any, Any], runtime: Runtime, conversation_id: UUID):
        self._socket = socket
        self._runtime = runtime
        self._conversation_id = conversation_id
        self._caller = identity(socket)
        # One frame at a time; a command holds it from its decision to its reply.
        self._sending = asyncio.Lock()

    async def serve(self, after: int) -> None:
        events = asyncio.create_task(self._forward_events(after))
        metrics.WEBSOCKETS.inc()
        try:
            await self._serve_commands()
        except OSError:
            pass  # the client went away during a reply (the server's ClientDisconnected)
        finally:
            metrics.WEBSOCKETS.dec()
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)

    async def _forward_events(self, after: int) -> None:
        runtime = self._runtime
        try:
            async for item in runtime.feed.follow(
                self._conversation_id,
                after=after,
                heartbeat_seconds=runtime.settings.sse_heartbeat_seconds,
            ):
                if isinstance(item, FeedEvent):
                    async with self._sending:
                        await self._socket.send_text(item.payload)
        except OSError:
            return  # the client went away
        except Exception as error:
            log.warning(
                "ws.stream_ended_by_error",
                error=repr(error),
                conversation_id=str(self._conversation_id),
            )
            with contextlib.suppress(Exception):
                await self._socket.close(WS_1011_INTERNAL_ERROR, STREAM_INTERRUPTED)

    async def _serve_commands(self) -> None:
        while True:
            message = await self._socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = _frame_data(message)
            if len(frame) > self._runtime.settings.max_request_bytes:
                await self._send(_too_large(len(frame), self._runtime.settings.max_request_bytes))
                continue
            try:
                command = _commands.decode(frame)
            except msgspec.DecodeError as error:
                await self._send(error_frame(error, _command_id(frame)))
                continue
            async with self._sending:
                try:
                    reply: Reply = await self._execute(command)
                except Exception as error:
                    reply = error_frame(error, command.id)
                await self._socket.send_text(_encoder.encode(reply))

    async def _send(self, reply: Reply) -> None:
        async with self._sending:
            await self._socket.send_text(_encoder.encode(reply))

    async def _execute(self, command: Command) -> Ack:
        runtime = self._runtime
        caller = self._caller.user_id
        cause = Cause(actor=f"user:{caller}", correlation_id=uuid.uuid4().hex)
        if isinstance(command, CancelRun):
            await runtime.control.cancel(command.run_id, cause, owner=caller)
            return Ack(command="cancel", id=command.id, run_id=command.run_id, status="cancelled")
        written = await accept_message(
            runtime,
            self._conversation_id,
            content=command.content,
            client_message_id=command.client_message_id,
            cause=cause,
        )
        posted = written.value
        return Ack(
            command="message",
            id=command.id,
            run_id=posted.run_id,
            message_id=posted.message_id,
            position=posted.position,
            global_position=written.global_position,
            duplicate=posted.duplicate,
            queued=posted.queued,
        )


@websocket(
    "/v1/conversations/{conversation_id:uuid}/ws",
    name="conversation_socket",
    guards=[requires("user", "auditor")],
)
async def conversation_socket(
    socket: WebSocket[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    conversation_id: FromPath[UUID],
    after: Annotated[str | None, QueryParameter(description="Position to resume after")] = None,
) -> None:
    """The conversation's events, and its commands, on one WebSocket."""
    await socket.accept()
    try:
        start = parse_cursor("after", after) or 0
        conversation = await asyncio.to_thread(runtime.service.get_conversation, conversation_id)
        caller = identity(socket)
        # Another owner's is as unknown as none; auditors may watch any.
        if conversation.owner != caller.user_id and not caller.has("auditor"):
            raise ConversationNotFound(conversation_id)
    except (HTTPException, DomainError) as refused:
        reason = refused.detail if isinstance(refused, HTTPException) else str(refused)
        await socket.close(WS_1008_POLICY_VIOLATION, reason)
        return
    await ConversationSocket(socket, runtime, conversation_id).serve(start)
