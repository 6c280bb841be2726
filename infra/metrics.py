"""Prometheus metrics: each process counts its own and serves them itself.

The API serves `/metrics` (http/metrics.py); a worker or a `projections run` process
serves them on `THREADLOG_METRICS_PORT` (`serve_metrics`). Nothing is aggregated across
processes here: Prometheus scrapes each one and sums (`sum by (...)`), as usual.

Hot paths pay one counter increment per batch, never one per token: the writer counts a
whole transaction's events at once, and every labelled child is bound here, once, so no
call site looks a label up. Gauges that need a query (lags, runs by status) are read only
when scraped, by `RuntimeCollector`.
"""

import hmac
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from eventsourcing.persistence import Recording
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from threadlog.domain.events import TokenStreamed

log = structlog.get_logger(__name__)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MODEL = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

EVENTS_WRITTEN = Counter("threadlog_events_written", "Events this process committed to the store")
TOKENS_WRITTEN = Counter(
    "threadlog_tokens_written", "TokenStreamed events committed (rate(): tokens per second)"
)
WRITER_BATCH = Histogram(
    "threadlog_writer_batch_events",
    "Events per group-commit transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
WRITER_COMMIT = Histogram(
    "threadlog_writer_commit_seconds",
    "One group commit, its wait for the store included",
    buckets=_LATENCY,
)

_STREAMS = Gauge("threadlog_open_streams", "Client streams open on this process", ["kind"])
SSE_STREAMS = _STREAMS.labels("sse")
FIREHOSE_STREAMS = _STREAMS.labels("firehose")
WEBSOCKETS = _STREAMS.labels("websocket")

_REPLAY_PAGES = Counter(
    "threadlog_replay_pages",
    "Pages of stored events a stream caught up with, by where they came from",
    ["source"],
)
REPLAY_PAGES_KEPT = _REPLAY_PAGES.labels("kept")
REPLAY_PAGES_STORE = _REPLAY_PAGES.labels("store")
REPLAY_KEPT_BYTES = Gauge(
    "threadlog_replay_kept_bytes", "What the frames kept for replays take on this process"
)

RUNS_ACTIVE = Gauge("threadlog_runs_active", "Runs executing in this process now")
_RUNS_ENDED = Counter("threadlog_runs_ended", "Runs this process executed to an end", ["outcome"])
RUNS_COMPLETED = _RUNS_ENDED.labels("completed")
RUNS_FAILED = _RUNS_ENDED.labels("failed")
RUNS_CANCELLED = _RUNS_ENDED.labels("cancelled")
RUNS_INTERRUPTED = _RUNS_ENDED.labels("interrupted")

MODEL_REQUEST = Histogram(
    "threadlog_model_request_seconds",
    "One model request, from asking to its last streamed event",
    buckets=_MODEL,
)
MODEL_FIRST_TOKEN = Histogram(
    "threadlog_model_first_token_seconds",
    "From a run's start to its first token or partial output",
    buckets=_MODEL,
)


def count_committed(recordings: Sequence[Recording[UUID]]) -> None:
    """A commit listener (every save of this process): one increment per save."""
    EVENTS_WRITTEN.inc(len(recordings))
    tokens = sum(1 for recording in recordings if type(recording.domain_event) is TokenStreamed)
    if tokens:
        TOKENS_WRITTEN.inc(tokens)


@dataclass(frozen=True)
class RuntimeSources:
    """What the scrape-time gauges read, from one process's runtime (blocking calls)."""

    store_head: Callable[[], int]
    relay_position: Callable[[], int] | None
    projection_positions: Callable[[], Iterable[tuple[str, int]]]
    runs_by_status: Callable[[], dict[str, int]] | None


class RuntimeCollector(Collector):
    """Lags and runs, read when scraped. One per process; the latest runtime feeds it."""

    def __init__(self) -> None:
        self.sources: RuntimeSources | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sources = self.sources
        if sources is None:
            return
        try:
            head = sources.store_head()
            relay = GaugeMetricFamily(
                "threadlog_relay_lag_events",
                "Events committed to the store and not yet published on JetStream by the "
                "relay of this process (store head minus stream head)",
            )
            if sources.relay_position is not None:
                relay.add_metric([], max(head - sources.relay_position(), 0))
            projections = GaugeMetricFamily(
                "threadlog_projection_lag_events",
                "Events committed to the store and not yet applied to a read model",
                labels=["read_model"],
            )
            for name, position in sources.projection_positions():
                projections.add_metric([name], max(head - position, 0))
            runs = GaugeMetricFamily(
                "threadlog_runs",
                "Runs by status, every process's (the runs read model)",
                labels=["status"],
            )
            if sources.runs_by_status is not None:
                for status, count in sorted(sources.runs_by_status().items()):
                    runs.add_metric([status], count)
        except Exception as error:
            # A scrape while the store is down: these gauges are missing, the rest stays.
            log.warning("metrics.collect_failed", error=repr(error))
            return
        yield relay
        yield projections
        yield runs


RUNTIME = RuntimeCollector()
REGISTRY.register(RUNTIME)


def authorized(header: str | None, token: str | None) -> bool:
    """`Authorization: Bearer <THREADLOG_METRICS_TOKEN>`, compared in constant time."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_metrics(host: str, port: int, token: str | None) -> WSGIServer:
    """The metrics of a process without an HTTP API (a worker, `projections run`), on
    their own port, in a thread; with `token` set, only `Bearer <token>` may read them."""
    metrics = make_wsgi_app(REGISTRY)

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if token and not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"metrics need Authorization: Bearer <THREADLOG_METRICS_TOKEN>\n"]
        answer: Iterable[bytes] = metrics(environ, start_response)
        return answer

    server = make_server(host, port, guarded, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="threadlog-metrics", daemon=True).start()
    log.info("metrics.serving", host=host, port=server.server_port)
    return server
