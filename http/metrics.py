"""`GET /metrics`: this process's Prometheus metrics, for admins and the metrics token.

Requests are counted and timed by Litestar's Prometheus middleware (`threadlog_http_*`,
by method, route template and status); the rest is `infra/metrics.py`. An SSE or
WebSocket request is timed when it closes: its duration is the stream's lifetime.
"""

import asyncio
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from threadlog.http.auth import PUBLIC, unauthenticated
from threadlog.infra.auth import Unauthenticated
from threadlog.infra.metrics import authorized
from threadlog.infra.runtime import Runtime

PATH = "/metrics"

HTTP_METRICS = PrometheusConfig(
    app_name="threadlog",
    prefix="threadlog_http",
    # The route's template (/v1/conversations/{conversation_id}), not each id: bounded labels.
    group_path=True,
    exclude=[f"^{PATH}$"],
)


@get(PATH, opt=PUBLIC, include_in_schema=False)
async def metrics(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    """Authenticated here, not by the middleware: a scraper's bearer token is the metrics
    token, not a JWT."""
    settings = runtime.settings
    if not authorized(request.headers.get("authorization"), settings.metrics_token):
        headers = {name: request.headers[name] for name in request.headers}
        client = request.client.host if request.client else None
        try:
            caller = await asyncio.to_thread(
                runtime.authenticator.authenticate,
                headers,
                request.query_params.get("access_token"),
                client,
            )
        except Unauthenticated as error:
            raise unauthenticated(str(error)) from None
        if not caller.has("admin"):
            raise PermissionDeniedException(detail="metrics need the role admin or the token")
    body = await asyncio.to_thread(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
