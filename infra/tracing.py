"""OpenTelemetry tracing: off unless the standard `OTEL_*` variables ask for it.

On (`OTEL_TRACES_EXPORTER` other than `none`, or an `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`;
`OTEL_SDK_DISABLED=true` wins), `tracing_from_env` builds a tracer provider with the SDK's
own reading of the rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`). `install` then gives it to:

- the HTTP layer: Litestar's OpenTelemetry plugin (a server span per request, with the
  request id, which is every caused event's `correlation_id`, as `threadlog.request_id`);
- `span()` here: a run, the store write of its events (the group commit links to the runs
  whose events it carries), the relay's publish of a batch, an SSE page's delivery;
- pydantic-ai (`Agent.instrument_all`): model requests and tool calls under the run's span,
  without message content (personal data, erasable only in the store);
- logs: `trace_id` and `span_id` on every line logged inside a span.

Off (the default) there is no tracer provider, no plugin, no instrumentation: `span()` is
a `nullcontext` and `start_span()` None.
"""

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Tracer

_tracer: Tracer | None = None

ENABLING = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@dataclass(frozen=True)
class Tracing:
    """A tracer provider (the SDK's `TracerProvider`) for this process."""

    provider: Any


def tracing_from_env(environ: Mapping[str, str]) -> Tracing | None:
    """The configured tracing, or None when the OTEL_* variables leave it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    if not exporters and any(environ.get(name) for name in ENABLING):
        exporters = ["otlp"]
    exporters = [name for name in exporters if name != "none"]
    if not exporters:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": "threadlog"})
    )
    for name in exporters:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this server knows otlp, console")
    return Tracing(provider)


def install(tracing: Tracing) -> None:
    """Turns tracing on in this process (the composition root calls it, once)."""
    global _tracer
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings

    _tracer = tracing.provider.get_tracer("threadlog")
    Agent.instrument_all(
        InstrumentationSettings(tracer_provider=tracing.provider, include_content=False)
    )


def uninstall() -> None:
    global _tracer
    from pydantic_ai import Agent

    _tracer = None
    Agent.instrument_all(False)


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span around a block, the current one's child; a no-op while tracing is off."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


def start_span(name: str, links: Sequence[SpanContext] = (), **attributes: Any) -> Span | None:
    """A span to end by hand (`span.end()`), not made current: for async generators,
    where a current span would outlive its context across `yield`. None while off."""
    if _tracer is None:
        return None
    return _tracer.start_span(
        name, attributes=attributes, links=[Link(context) for context in links]
    )


def current_context() -> SpanContext | None:
    """The current span's context, to link to from work done elsewhere (another thread)."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextlib.contextmanager
def linked_span(name: str, links: Sequence[SpanContext], **attributes: Any) -> Iterator[None]:
    """A root span linked to the spans it works for (a group commit's runs)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(
        name, attributes=attributes, links=[Link(context) for context in links]
    ):
        yield


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the current trace and span ids on each log line."""
    if _tracer is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event["trace_id"] = format(context.trace_id, "032x")
            event["span_id"] = format(context.span_id, "016x")
    return event
