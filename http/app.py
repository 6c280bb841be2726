"""The Litestar application, built by one factory from settings."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry.trace import Span
from pydantic_ai.models import Model

from threadlog.http.a2a import A2A_HANDLERS
from threadlog.http.agents import AgentController, marketplace
from threadlog.http.agui import run_agent
from threadlog.http.audit import AuditController
from threadlog.http.auth import Authentication
from threadlog.http.console import CONSOLE_HANDLERS
from threadlog.http.context import request_context
from threadlog.http.contract import StrictParameters, finish_contract
from threadlog.http.conversations import ConversationController
from threadlog.http.erasure import erase_user_content
from threadlog.http.errors import document_errors, exception_handlers
from threadlog.http.health import HealthController
from threadlog.http.metrics import HTTP_METRICS, metrics
from threadlog.http.protection import RateLimits, cors_config
from threadlog.http.reads import READ_HANDLERS
from threadlog.http.runs import RunController
from threadlog.http.state import conversation_state
from threadlog.http.stats import STATS_HANDLERS
from threadlog.http.stream import firehose
from threadlog.http.users import AdminController, KeyController, UserController
from threadlog.http.ws import conversation_socket
from threadlog.infra.agents.registry import AgentRegistry
from threadlog.infra.interpreter import tune_interpreter
from threadlog.infra.runtime import Runtime
from threadlog.infra.settings import Settings
from threadlog.infra.tracing import Tracing, install

VERSION = "0.1.0"


def _runtime(state: State) -> Runtime:
    return cast(Runtime, state.runtime)


def _request_id_on_span(span: Span, scope: dict[str, Any]) -> None:
    """The server span carries the request id: every event the request causes has it as
    its `correlation_id`, and every log line of the request as its `request_id`."""
    if span.is_recording():
        span.set_attribute("threadlog.request_id", scope.get("state", {}).get("request_id", ""))


def _traced(tracing: Tracing | None) -> list[OpenTelemetryPlugin]:
    """Litestar's OpenTelemetry plugin when tracing is on (none at all when it is off)."""
    if tracing is None:
        return []
    install(tracing)
    config = OpenTelemetryConfig(
        tracer_provider=tracing.provider,
        server_request_hook_handler=_request_id_on_span,
        exclude=["^/metrics", "^/health", "^/schema"],
    )
    return [OpenTelemetryPlugin(config)]


def create_app(
    settings: Settings, *, model: Model | None = None, tracing: Tracing | None = None
) -> Litestar:
    """The whole service: `model` replaces the configured one (tests pass fakes here);
    `tracing` (infra/tracing.py) turns OpenTelemetry on."""
    # Built now, not at startup: a bad agents file is a SettingsError before serving.
    agents = AgentRegistry.build(settings, model)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Runtime.open(settings, model=model, agents=agents) as runtime:
            app.state.runtime = runtime
            tune_interpreter()
            yield

    handlers: Any = exception_handlers()
    strict = StrictParameters()
    app = Litestar(
        # READ_HANDLERS share ConversationController's paths: they must come after it.
        route_handlers=[
            ConversationController,
            *READ_HANDLERS,
            *STATS_HANDLERS,
            conversation_state,
            RunController,
            AuditController,
            UserController,
            KeyController,
            AdminController,
            erase_user_content,
            HealthController,
            AgentController,
            marketplace,
            run_agent,
            firehose,
            metrics,
            *CONSOLE_HANDLERS,
            *A2A_HANDLERS,
        ],
        # Metrics outermost: they count every answer. Rate limits next: they must also meter
        # requests that fail authentication.
        middleware=[
            HTTP_METRICS.middleware,
            RateLimits(),
            DefineMiddleware(Authentication, exclude=["^/schema"]),
        ],
        cors_config=cors_config(settings),
        dependencies={"runtime": Provide(_runtime, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers=handlers,
        before_request=strict,
        request_max_body_size=settings.max_request_bytes,
        openapi_config=OpenAPIConfig(
            title="threadlog",
            version=VERSION,
            description="Event-sourced conversations for AI agents.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        logging_config=None,
        plugins=_traced(tracing),
        debug=False,
    )
    document_errors(app)
    finish_contract(app, settings, [registered.spec.name for registered in agents], strict)
    app.register(conversation_socket)
    # Outermost, not as route middleware: unrouted requests (404, 405) get a request id too.
    app.asgi_handler = request_context(app.asgi_handler, settings.max_header_bytes)
    return app
