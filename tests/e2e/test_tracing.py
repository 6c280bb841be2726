"""Tracing: one trace from a request to its command, store write, run, model call, relay
publish and SSE delivery, joined to the request id (the events' correlation_id)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    read_sse,
    scripted_model,
    wait_for_run_end,
)
from threadlog.infra import tracing
from threadlog.infra.tracing import Tracing, tracing_from_env

REQUEST_ID = "trace-me-0001"


@pytest.fixture
def exported() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    """Tracing into memory; turned off again after the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    tracing.uninstall()
    provider.shutdown()


def spans_named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def wait_for(exporter: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, ...]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = exporter.get_finished_spans()
        if spans_named(spans, name):
            return spans
        time.sleep(0.05)
    raise AssertionError(f"no span {name!r}: {[s.name for s in exporter.get_finished_spans()]}")


def test_a_request_is_traced_to_its_run_model_call_store_write_and_delivery(
    make_settings: SettingsFactory, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    traced, exporter = exported
    server = LiveServer(make_settings(), scripted_model(["a", "b"]), traced)
    with server, server.client() as client:
        conversation_id = create_conversation(client)
        posted = client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"content": "hello"},
            headers={"x-request-id": REQUEST_ID},
        )
        assert posted.status_code == 202
        events = wait_for_run_end(client, conversation_id)
        read_sse(client, f"/v1/conversations/{conversation_id}/events")
        wait_for(exporter, "relay.publish")
        spans = wait_for(exporter, "sse.deliver")
    [request] = [
        span
        for span in spans
        if (span.attributes or {}).get("threadlog.request_id") == REQUEST_ID and span.parent is None
    ]
    trace_id = request.context.trace_id
    in_trace = [span for span in spans if span.context.trace_id == trace_id]
    names = {span.name for span in in_trace}
    assert {"command.post_message", "store.insert", "run", "run.flush"} <= names
    assert any(name.startswith("chat ") for name in names), names  # pydantic-ai's model call
    [run] = spans_named(in_trace, "run")
    assert (run.attributes or {})["correlation_id"] == REQUEST_ID
    assert {e["correlation_id"] for e in events if e["type"] == "RunStarted"} == {REQUEST_ID}
    commits = spans_named(spans, "store.commit")
    assert any(link.context.trace_id == trace_id for span in commits for link in span.links)
    assert spans_named(spans, "relay.publish") and spans_named(spans, "sse.deliver")


def test_tracing_is_off_without_otel_variables() -> None:
    assert tracing_from_env({}) is None
    assert tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert not tracing.enabled()
    with tracing.span("nothing") as span:
        assert span is None
    assert tracing.start_span("nothing") is None


def test_otel_variables_turn_tracing_on() -> None:
    configured = tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert configured is not None
    configured.provider.shutdown()
