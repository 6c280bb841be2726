"""Per-request context: the request id, accepted or generated, and the access log."""

import json
import re
import time
import uuid
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

REQUEST_ID_HEADER = b"x-request-id"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# An API answers data, never pages: nothing may load or frame it. The OpenAPI pages
# (/schema) load Swagger UI's scripts and keep the browser default.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# The console (`/` and its assets under `/console/`, http/console.py) is a page: its own
# scripts, styles, images and API calls from this origin only; no inline script or style
# attribute, no plugin, no framing, no form posting elsewhere.
CONSOLE_CSP = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
)
CONSOLE_ASSETS = "/console/"


def csp_for(path: str) -> tuple[bytes, bytes] | None:
    """The CSP header of a response to `path`: the API's, the console's, or none (the
    OpenAPI pages keep the browser default: Swagger UI loads its scripts)."""
    if path.startswith("/schema"):
        return None
    if path == "/" or path.startswith(CONSOLE_ASSETS):
        return CONSOLE_CSP
    return API_CSP


_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = structlog.get_logger("threadlog.http")


def request_id_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    state = connection.scope.get("state") or {}
    value = state.get("request_id")
    return value if isinstance(value, str) else None


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) for name, value in scope.get("headers", []))


async def _refuse_large_headers(send: Send, request_id: str, size: int, limit: int) -> None:
    body = json.dumps(
        {
            "error": "headers_too_large",
            "message": f"the request headers are {size} bytes; the limit is {limit} bytes",
            "details": {"limit": limit},
            "request_id": request_id,
        }
    ).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER, request_id.encode("latin-1")),
        *SECURITY_HEADERS,
    ]
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 431,
        "headers": headers,
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)


def request_context(app: ASGIApp, max_header_bytes: int = 16 * 1024) -> ASGIApp:
    """Adds `X-Request-ID` to the response and every log line, logs each request, and
    refuses (431) requests whose headers exceed `max_header_bytes`."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        size = _header_bytes(scope)
        if size > max_header_bytes:
            log.info("http.headers_too_large", request_id=request_id, size=size)
            await _refuse_large_headers(send, request_id, size, max_header_bytes)
            return
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                headers.extend(SECURITY_HEADERS)
                csp = csp_for(str(scope.get("path", "")))
                if csp is not None:
                    headers.append(csp)
                message["headers"] = headers
                log.info(
                    "http.request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=message["status"],
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await app(scope, receive, send_with_id)

    return middleware
