"""A2A (Agent2Agent protocol 1.0, JSON-RPC binding): agent cards and one JSON-RPC
endpoint per agent (docs/a2a.md).

- `GET /.well-known/agent-card.json`: the default agent's card;
  `GET /a2a/{agent}/.well-known/agent-card.json`: any agent's (what the SDK's card
  resolver reads under the base URL `/a2a/{agent}`).
- `POST /a2a/{agent}`: `SendMessage`, `SendStreamingMessage`, `GetTask`, `CancelTask`,
  `SubscribeToTask`. A JSON-RPC error is HTTP 200 with an `error` object; a stream is
  `text/event-stream`, each item's `id:` its threadlog position (`Last-Event-ID` on
  `SubscribeToTask` resumes after it).

Authenticated like every route (API key or JWT); another user's task or context is
`-32001` exactly like one that does not exist. Outside the OpenAPI document: the agent
card describes these routes, and JSON-RPC's one POST has no per-method schema there.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Stream

from threadlog.domain.agent import AgentIsRetired
from threadlog.http import a2a_service as service
from threadlog.http.a2a_protocol import (
    CARD_PATH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION,
    VERSION_HEADER,
    VERSION_NOT_SUPPORTED,
    RpcError,
    RpcRequest,
    SendMessageParams,
    StreamResponse,
    TaskIdParams,
    encode,
    error_body,
    params_as,
    parse_request,
    request_id_of,
    result_body,
)
from threadlog.http.auth import ANYONE, USER
from threadlog.http.conversations import bindable_agent
from threadlog.http.errors import UnknownAgent
from threadlog.infra import metrics
from threadlog.infra.agents.catalog import AgentUnrunnable
from threadlog.infra.agents.registry import RegisteredAgent
from threadlog.infra.runtime import Runtime
from threadlog.infra.stream.feed import Heartbeat

log = structlog.get_logger(__name__)

RequestAny = Request[Any, Any, Any]
JSON = "application/json"
VERSION = "0.1.0"


async def _agent(runtime: Runtime, request: RequestAny, reference: str) -> RegisteredAgent:
    """An agent the caller may use, by a system agent's name or an agent's id, at its
    latest version; another user's private agent, a retired or an unknown one is 404."""
    try:
        await bindable_agent(runtime, request, reference)
    except (UnknownAgent, AgentIsRetired):
        raise NotFoundException(
            detail=f"unknown agent {reference!r}; GET /v1/agents lists them"
        ) from None
    pin = await asyncio.to_thread(runtime.catalog.pin_of, reference)
    try:
        registered = await asyncio.to_thread(
            runtime.catalog.runnable, reference, pin.agent_id, pin.agent_version
        )
    except AgentUnrunnable:
        registered = None
    if registered is None:
        raise NotFoundException(detail=f"the agent {reference!r} cannot run on this server")
    return registered


def _base_url(request: RequestAny) -> str:
    return str(request.base_url).rstrip("/")


def _card(request: RequestAny, registered: RegisteredAgent, reference: str) -> Response[bytes]:
    card = service.agent_card(registered, _base_url(request), VERSION, reference)
    return Response(encode(card), media_type=JSON)


@get(CARD_PATH, guards=ANYONE, include_in_schema=False)
async def default_agent_card(
    request: RequestAny, runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    """The default agent's card (`THREADLOG_AGENT`)."""
    reference = runtime.settings.agent
    return _card(request, await _agent(runtime, request, reference), reference)


@get("/a2a/{agent:str}" + CARD_PATH, guards=ANYONE, include_in_schema=False)
async def agent_card(
    request: RequestAny, runtime: NamedDependency[Runtime], agent: FromPath[str]
) -> Response[bytes]:
    return _card(request, await _agent(runtime, request, agent), agent)


# --- JSON-RPC --------------------------------------------------------------------------------


def _json(body: bytes) -> Response[bytes]:
    return Response(body, status_code=200, media_type=JSON)


def _sse_frame(request_id: str | int | None, position: int, item: StreamResponse) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (position, result_body(request_id, item))


def _check_version(request: RequestAny) -> None:
    asked = request.headers.get(VERSION_HEADER, "").strip()
    if asked and asked.split(".")[:2] != PROTOCOL_VERSION.split("."):
        raise RpcError(
            VERSION_NOT_SUPPORTED,
            f"this server speaks A2A {PROTOCOL_VERSION}, not {asked}",
            {"supported": [PROTOCOL_VERSION]},
        )


def _cursor(request: RequestAny) -> int | None:
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return None
    try:
        cursor = int(raw)
    except ValueError:
        raise RpcError(INVALID_PARAMS, "Last-Event-ID must be a threadlog position") from None
    if not 0 <= cursor < 2**63:
        raise RpcError(INVALID_PARAMS, "Last-Event-ID must be a threadlog position")
    return cursor


async def _frames(
    request_id: str | int | None,
    updates: AsyncGenerator[tuple[int, StreamResponse] | Heartbeat, None],
) -> AsyncIterator[bytes]:
    metrics.SSE_STREAMS.inc()
    try:
        # Closed with the response: the feed's follower leaves the live path at once.
        async with contextlib.aclosing(updates):
            async for update in updates:
                if isinstance(update, Heartbeat):
                    yield b": heartbeat\n\n"
                    continue
                position, item = update
                yield _sse_frame(request_id, position, item)
    except Exception as error:
        # Headers are sent: a final error event; the client resubscribes with its cursor.
        rpc_error = service.rpc_error_of(error)
        if rpc_error is None:
            log.warning("a2a.stream_ended_by_error", error=repr(error))
            rpc_error = RpcError(INTERNAL_ERROR, "the stream was interrupted; resubscribe")
        yield b"event: error\ndata: %s\n\n" % error_body(request_id, rpc_error)
    finally:
        metrics.SSE_STREAMS.dec()


def _stream(
    request_id: str | int | None,
    updates: AsyncGenerator[tuple[int, StreamResponse] | Heartbeat, None],
) -> Stream:
    return Stream(
        _frames(request_id, updates),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


Method = Callable[[RequestAny, Runtime, str, RpcRequest], Awaitable[Response[Any]]]


async def _send_message(
    request: RequestAny, runtime: Runtime, agent: str, rpc: RpcRequest
) -> Response[Any]:
    params = params_as(rpc.params, SendMessageParams)
    task = await service.send(runtime, request, agent, params)
    configuration = params.configuration
    immediately = configuration is not None and configuration.return_immediately
    history_length = configuration.history_length if configuration else None
    wait = 0.0 if immediately else runtime.settings.run_wait_seconds
    view = await service.task_view(runtime, task, history_length, wait)
    return _json(result_body(rpc.id, {"task": view}))


async def _send_streaming_message(
    request: RequestAny, runtime: Runtime, agent: str, rpc: RpcRequest
) -> Response[Any]:
    params = params_as(rpc.params, SendMessageParams)
    task = await service.send(runtime, request, agent, params)
    return _stream(rpc.id, service.task_stream(runtime, task, None))


async def _get_task(
    request: RequestAny, runtime: Runtime, agent: str, rpc: RpcRequest
) -> Response[Any]:
    params = params_as(rpc.params, TaskIdParams)
    if params.history_length is not None and params.history_length < 0:
        raise RpcError(INVALID_PARAMS, "historyLength must be 0 or more")
    task = await service.owned_task(runtime, request, params.id)
    return _json(result_body(rpc.id, await service.task_view(runtime, task, params.history_length)))


async def _cancel_task(
    request: RequestAny, runtime: Runtime, agent: str, rpc: RpcRequest
) -> Response[Any]:
    params = params_as(rpc.params, TaskIdParams)
    task = await service.owned_task(runtime, request, params.id)
    return _json(result_body(rpc.id, await service.cancel(runtime, request, task)))


async def _subscribe_to_task(
    request: RequestAny, runtime: Runtime, agent: str, rpc: RpcRequest
) -> Response[Any]:
    params = params_as(rpc.params, TaskIdParams)
    cursor = _cursor(request)
    task = await service.owned_task(runtime, request, params.id)
    return _stream(rpc.id, service.task_stream(runtime, task, cursor))


METHODS: dict[str, Method] = {
    "SendMessage": _send_message,
    "SendStreamingMessage": _send_streaming_message,
    "GetTask": _get_task,
    "CancelTask": _cancel_task,
    "SubscribeToTask": _subscribe_to_task,
}


@post("/a2a/{agent:str}", guards=USER, include_in_schema=False, status_code=200)
async def a2a_rpc(
    request: RequestAny, runtime: NamedDependency[Runtime], agent: FromPath[str]
) -> Response[Any]:
    """One agent's A2A JSON-RPC endpoint."""
    await _agent(runtime, request, agent)
    request_id: str | int | None = None
    try:
        request_id, rpc = parse_request(await request.body())
        method = METHODS.get(rpc.method)
        if method is None:
            raise RpcError(
                METHOD_NOT_FOUND,
                f"unknown method {rpc.method!r}",
                {"supported": sorted(METHODS)},
            )
        _check_version(request)
        return await method(request, runtime, agent, rpc)
    except Exception as error:
        rpc_error = service.rpc_error_of(error)
        if rpc_error is None:
            log.exception("a2a.unhandled_error", error=repr(error))
            rpc_error = RpcError(INTERNAL_ERROR, "the server failed to handle the request")
        parsed_id = request_id_of(rpc_error)
        return _json(error_body(request_id if parsed_id is None else parsed_id, rpc_error))


A2A_HANDLERS = [default_agent_card, agent_card, a2a_rpc]
