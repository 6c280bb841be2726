"""The one place that maps errors to HTTP: one error body everywhere, no tracebacks."""

from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import psycopg
import psycopg_pool
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import ParameterKwarg

from threadlog.domain.agent import (
    AgentGone,
    AgentIsRetired,
    AgentNotFound,
    InvalidAgent,
    NotAgentOwner,
)
from threadlog.domain.errors import (
    ConcurrentWrite,
    ConversationIsArchived,
    ConversationNotFound,
    DomainError,
    InvalidConversation,
    InvalidMessage,
    MessageTooLarge,
    RunAlreadyActive,
    RunAlreadyEnded,
    RunNotActive,
    RunNotFound,
)
from threadlog.domain.identity import InvalidUser, KeyNotFound, UsernameTaken, UserNotFound
from threadlog.http.context import request_id_of
from threadlog.http.schemas import ErrorBody
from threadlog.infra.runs.workqueue import RunQueueUnavailable
from threadlog.projections.read_models import PositionNotReached, ReadModelBehind

log = structlog.get_logger(__name__)

DOMAIN_STATUS: dict[type[DomainError], int] = {
    ConversationNotFound: 404,
    ConversationIsArchived: 409,
    RunAlreadyActive: 409,
    ConcurrentWrite: 409,
    RunNotActive: 409,
    RunAlreadyEnded: 409,
    RunNotFound: 404,
    InvalidMessage: 400,
    InvalidConversation: 400,
    MessageTooLarge: 413,
    UsernameTaken: 409,
    UserNotFound: 404,
    KeyNotFound: 404,
    InvalidUser: 400,
    AgentNotFound: 404,
    AgentIsRetired: 409,
    AgentGone: 410,
    NotAgentOwner: 403,
    InvalidAgent: 400,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "headers_too_large",
    503: "unavailable",
}

UNAVAILABLE = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
    RunQueueUnavailable,
)

RequestAny = Request[Any, Any, Any]
# What Litestar raises (as a 500) when a client disconnects before its body arrived.
CLIENT_DISCONNECTED = "client disconnected prematurely"


class BadRequest(HTTPException):
    """A request parameter is wrong; `details` names it."""

    status_code = 400
    code = "bad_request"


class PositionConflict(HTTPException):
    """A position the conversation or the store has not reached (yet): a valid number that
    conflicts with the current state, so 409, not 400."""

    status_code = 409
    code = "position_not_reached"


class UnknownAgent(BadRequest):
    """A conversation names an agent this server does not define."""

    code = "unknown_agent"


def error_response(
    request: RequestAny,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    body = ErrorBody(
        error=code, message=message, details=details, request_id=request_id_of(request)
    )
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _domain(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    assert isinstance(error, DomainError)
    status = DOMAIN_STATUS.get(type(error), 400)
    field = getattr(error, "field", None)
    details = {"field": field} if isinstance(field, str) else None
    return error_response(request, status, error.code, str(error), details)


def _validation(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    assert isinstance(error, ValidationException)
    details = [
        {**detail, "field": _wire_name(request, detail["field"])}
        for detail in _field_details(error.extra)
    ]
    fields = ", ".join(d["field"] for d in details if d.get("field")) or "request"
    message = "; ".join(d["message"] for d in details) or (error.detail or "invalid request")
    return error_response(request, 400, "validation_error", f"invalid {fields}: {message}", details)


def _field_details(extra: Any) -> list[dict[str, Any]]:
    items = extra if isinstance(extra, list) else ([extra] if extra else [])
    details = []
    for item in items:
        if isinstance(item, dict):
            field = item.get("key") or _path_field(str(item.get("message", "")))
            details.append(
                {
                    "field": field,
                    "source": item.get("source"),
                    "message": str(item.get("message", "")),
                }
            )
    return details


def _wire_name(request: RequestAny, field: str | None) -> str | None:
    """A parameter as the client spells it (`Last-Event-ID`, `timeout`), not as the handler
    names its argument."""
    parameters = request.route_handler.parsed_fn_signature.parameters
    definition = parameters.get(field) if field is not None else None
    kwarg = definition.kwarg_definition if definition is not None else None
    return (kwarg.name if isinstance(kwarg, ParameterKwarg) else None) or field


def _path_field(message: str) -> str | None:
    # msgspec names the location as "… - at `$.content`".
    marker = "at `$."
    if marker in message:
        return message.split(marker, 1)[1].rstrip("`").split("`")[0]
    return None


def _http(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    assert isinstance(error, HTTPException)
    status = error.status_code
    code = HTTP_CODES.get(status, "error" if status < 500 else "internal_error")
    if isinstance(error, BadRequest | PositionConflict):
        code = error.code
    if error.detail == CLIENT_DISCONNECTED:
        # Not a server fault: the client went away while sending its body; no one reads this.
        log.info("http.client_disconnected")
        return error_response(request, 400, "client_disconnected", "the client disconnected")
    if status >= 500:
        log.error("http.server_error", error=repr(error))
        return error_response(request, status, code, "the server failed to handle the request")
    return error_response(
        request, status, code, str(error.detail), error.extra or None, headers=error.headers
    )


def _unavailable(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    log.warning("http.dependency_unavailable", error=repr(error))
    return error_response(
        request,
        503,
        "unavailable",
        "a dependency (event store or NATS) is unavailable; retry shortly",
        headers={"Retry-After": "1"},
    )


def _behind(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    assert isinstance(error, ReadModelBehind)
    return error_response(
        request,
        503,
        "read_model_behind",
        f"{error}; retry shortly",
        {"read_model": error.name, "min_position": error.position, "reached": error.reached},
        headers={"Retry-After": "1"},
    )


def _not_reached(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    assert isinstance(error, PositionNotReached)
    return error_response(
        request,
        409,
        PositionConflict.code,
        str(error),
        {"field": "min_position", "store_position": error.store_position},
    )


def _decode(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    return error_response(request, 400, "validation_error", f"invalid request body: {error}")


def _internal(request: RequestAny, error: Exception) -> Response[ErrorBody]:
    log.exception("http.unhandled_error", error=repr(error))
    return error_response(request, 500, "internal_error", "the server failed to handle the request")


ERROR_RESPONSES = {
    400: "Invalid input; `details` names the field or parameter",
    401: "No or invalid credentials (with `WWW-Authenticate`)",
    403: "Your roles do not allow this",
    404: "Not found, or not yours",
    409: "Conflicts with the current state",
    413: "Body or message too large",
    429: "Rate limited (with `Retry-After`)",
    503: "A dependency is unavailable, or a read model is behind (with `Retry-After`)",
}


def document_errors(app: Litestar) -> None:
    """Every route documents the one error body (instead of Litestar's default 400 schema)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            documented = {
                status: ResponseSpec(data_container=ErrorBody, description=description)
                for status, description in ERROR_RESPONSES.items()
            }
            handler.responses = {**documented, **(handler.responses or {})}


def exception_handlers() -> dict[type[Exception], Callable[[RequestAny, Any], Response[ErrorBody]]]:
    handlers: dict[type[Exception], Callable[[RequestAny, Any], Response[ErrorBody]]] = {
        DomainError: _domain,
        ValidationException: _validation,
        HTTPException: _http,
        msgspec.DecodeError: _decode,
        UnicodeDecodeError: _decode,
        Exception: _internal,
    }
    for kind in UNAVAILABLE:
        handlers[kind] = _unavailable
    # More specific than OperationalError, which it is: Litestar picks the closest class.
    handlers[ReadModelBehind] = _behind
    handlers[PositionNotReached] = _not_reached
    return handlers
