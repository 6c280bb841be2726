"""Log lines inside a span carry its trace and span ids; without tracing, nothing."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from threadlog.infra import tracing
from threadlog.infra.tracing import Tracing, add_trace_ids


def test_a_log_line_inside_a_span_carries_its_trace_id() -> None:
    provider = TracerProvider()
    tracing.install(Tracing(provider))
    try:
        with tracing.span("work") as span:
            line = add_trace_ids(None, "info", {"event": "x"})
            expected = format(span.get_span_context().trace_id, "032x")
    finally:
        tracing.uninstall()
        provider.shutdown()
    assert line["trace_id"] == expected and len(line["span_id"]) == 16


def test_a_log_line_without_tracing_has_no_trace_id() -> None:
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
