"""Who is calling: the authentication middleware and the role guards every route declares.

Every route is authenticated except those marked `PUBLIC` (health, registration, login)
and the OpenAPI pages. SSE and WebSocket routes authenticate like the rest; browsers'
EventSource and WebSocket cannot set headers, so those may pass a JWT as
`?access_token=`.
"""

import asyncio
from collections.abc import Callable
from typing import Any, cast

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from threadlog.infra.auth import Identity, Unauthenticated
from threadlog.infra.runtime import Runtime

PUBLIC: dict[str, Any] = {"exclude_from_auth": True}
"""Route `opt` of the few routes anyone may call."""

CHALLENGE = 'Bearer realm="threadlog"'

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def unauthenticated(message: str) -> NotAuthorizedException:
    error = message.replace('"', "'")
    return NotAuthorizedException(
        detail=message,
        headers={
            "WWW-Authenticate": f'{CHALLENGE}, error="invalid_token", error_description="{error}"'
        },
    )


class Authentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        runtime = cast(Runtime, connection.app.state.runtime)
        headers = {name: connection.headers[name] for name in connection.headers}
        query_token = connection.query_params.get("access_token")
        client = connection.client.host if connection.client else None
        try:
            identity = await asyncio.to_thread(
                runtime.authenticator.authenticate, headers, query_token, client
            )
        except Unauthenticated as error:
            raise unauthenticated(str(error)) from None
        return AuthenticationResult(user=identity, auth=identity.via)


def identity(connection: ASGIConnection[Any, Any, Any, Any]) -> Identity:
    """The authenticated caller (set by the middleware before any guarded handler)."""
    user = connection.scope.get("user")
    if not isinstance(user, Identity):
        raise unauthenticated("authentication required")
    return user


def requires(*roles: str) -> Guard:
    """A guard: the caller holds at least one of `roles`."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        caller = identity(connection)
        if not any(caller.has(role) for role in roles):
            raise PermissionDeniedException(detail=f"this needs the role {' or '.join(roles)}")

    guard.__name__ = f"requires_{'_or_'.join(roles)}"
    return guard


USER = [requires("user")]
ANYONE = [requires("user", "auditor", "analyst", "admin")]
"""Any authenticated caller, whatever their roles."""
AUDITOR = [requires("auditor")]
ANALYST = [requires("analyst", "admin")]
ADMIN = [requires("admin")]
