"""Rate limits per credential and per client address, before anything else runs.

Counted across every API process (infra/stream/ratelimit.py). A credential is limited
whether or not it turns out valid, so guessing keys costs the guesser's address its
budget too. Health probes, the OpenAPI pages and the console's assets are not limited.
"""

from typing import Any, cast

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from threadlog.infra.runtime import Runtime
from threadlog.infra.settings import Settings
from threadlog.infra.stream.ratelimit import Decision, subject_for

_UNLIMITED = ("/health", "/schema", "/console/")
"""Not metered: probes, the OpenAPI pages and the console's static assets."""


def _credential(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return connection.headers.get("x-api-key") or connection.headers.get("authorization")


def _refuse(decision: Decision, what: str) -> TooManyRequestsException:
    return TooManyRequestsException(
        detail=f"too many requests for this {what}: at most {decision.limit} per window",
        headers={
            "Retry-After": str(decision.retry_after_seconds),
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": "0",
        },
    )


def cors_config(settings: Settings) -> CORSConfig | None:
    """CORS for the configured origins; credentials only with explicit origins, never `*`."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=[
            "Authorization",
            "X-API-Key",
            "Content-Type",
            "Last-Event-ID",
            "X-Request-ID",
        ],
        expose_headers=["X-Request-ID", "Retry-After", "Location"],
        max_age=600,
    )


class RateLimits(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path = str(scope.get("path", ""))
        if scope.get("method") == "OPTIONS" or path.startswith(_UNLIMITED):
            await next_app(scope, receive, send)
            return
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        runtime = cast(Runtime, connection.app.state.runtime)
        limiter, settings = runtime.rate_limiter, runtime.settings
        if limiter is not None:
            address = connection.client.host if connection.client else "unknown"
            if settings.rate_limit_per_ip:
                decision = await limiter.hit(subject_for("ip", address), settings.rate_limit_per_ip)
                if not decision.allowed:
                    raise _refuse(decision, "client address")
            credential = _credential(connection)
            if credential and settings.rate_limit_per_key:
                decision = await limiter.hit(
                    subject_for("key", credential), settings.rate_limit_per_key
                )
                if not decision.allowed:
                    raise _refuse(decision, "credential")
        await next_app(scope, receive, send)
