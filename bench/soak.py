"""Benchmark 7: many idle SSE connections held open, and the server's other requests meanwhile.

The real server runs as its own OS process (`threadlog serve` on PostgreSQL and NATS)
with a short SSE heartbeat. A separate process (`bench.sse_clients`) opens C idle
streams (`GET /v1/conversations/{id}/events`, spread over the conversations) and
holds them for S seconds, counting heartbeats. Measured: how many opened and stayed
open, heartbeats per stream, the server's resident memory before, with the streams
open, at its peak and at the end of the hold (/proc), and the latency of other
requests made while the streams are open (`GET /health/` and a JSON read of a
conversation), against the same requests with no stream open, measured just before.

Per-conversation streams have no server-side limit (`THREADLOG_STREAM_MAX_CLIENTS`
caps only the firehose, `/v1/stream`), and the benchmark turns the rate limits off.
"""

import asyncio
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.load import create_conversations, headers
from bench.measure import Sample, percentile, progress
from bench.processes import (
    ClientsProcess,
    ResourceSampler,
    ServedApp,
    rss_bytes,
    stream_of,
    threadlog_server,
)
from bench.servers import Servers
from bench.sse_clients import IdleJob, IdleOutcome, Target

PROBE_PAUSE_SECONDS = 0.05
CATCH_UP_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class SoakConfig:
    connections: int
    conversations: int
    hold_seconds: float
    heartbeat_seconds: float
    baseline_seconds: float  # probing with no stream open, before


@dataclass(frozen=True, kw_only=True)
class Probes:
    health_ms: Sample
    read_ms: Sample

    def health(self, q: float) -> float:
        return percentile(self.health_ms.values, q)

    def read(self, q: float) -> float:
        return percentile(self.read_ms.values, q)


@dataclass(frozen=True, kw_only=True)
class SoakResult:
    config: SoakConfig
    outcome: IdleOutcome
    open_seconds: float  # until every stream was open
    fd_limit: int
    rss_before: int
    rss_open: int
    rss_peak: int
    rss_end: int
    cpu_seconds: float  # the server's, over the hold
    baseline: Probes
    during: Probes

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_open

    @property
    def heartbeats(self) -> Sample | None:
        beats = self.outcome.heartbeats
        return Sample.of(float(b) for b in beats) if beats else None

    @property
    def health_ratio(self) -> float:
        return self.during.health_ms.median / self.baseline.health_ms.median

    @property
    def read_ratio(self) -> float:
        return self.during.read_ms.median / self.baseline.read_ms.median


def run_soak(servers: Servers, config: SoakConfig) -> SoakResult:
    url = servers.databases.create()
    try:
        with tempfile.TemporaryDirectory(prefix="threadlog-bench-soak-") as data_dir:
            server = threadlog_server(
                servers,
                url,
                Path(data_dir),
                SSE_HEARTBEAT_SECONDS=f"{config.heartbeat_seconds:g}",
            )
            try:
                app = server.start("/health/ready")
                return _measure(app, config)
            finally:
                server.stop()
                servers.release_stream(stream_of(server))
    finally:
        servers.databases.drop(url)


def _measure(app: ServedApp, config: SoakConfig) -> SoakResult:
    progress(f"soak: creating {config.conversations} conversations")
    conversations = asyncio.run(create_conversations(app.base_url, config.conversations))
    with httpx.Client(base_url=app.base_url, headers=headers(), timeout=30) as client:
        _wait_caught_up(client)
        progress(f"soak: probing with no stream open for {config.baseline_seconds:.0f} s")
        baseline = _probe(client, conversations[0], config.baseline_seconds)
        rss_before = rss_bytes(app.pid)
        paths = [
            f"/v1/conversations/{conversations[i % len(conversations)]}/events"
            for i in range(config.connections)
        ]
        target = Target(host="127.0.0.1", port=app.port, headers=headers())
        progress(f"soak: opening {config.connections} SSE streams")
        started = time.perf_counter()
        clients = ClientsProcess(
            IdleJob(target=target, paths=paths, hold_seconds=config.hold_seconds)
        )
        try:
            clients.wait_ready()
            open_seconds = time.perf_counter() - started
            progress(
                f"soak: all open after {open_seconds:.1f} s; holding {config.hold_seconds:.0f} s"
            )
            with ResourceSampler(app.pid) as resources:
                # Probe through most of the hold, not past it.
                during = _probe(client, conversations[0], config.hold_seconds * 0.8)
                outcome = clients.idle_outcome()
        finally:
            clients.kill()
    progress(f"soak: {outcome.open_at_end}/{outcome.clients} streams open at the end")
    return SoakResult(
        config=config,
        outcome=outcome,
        open_seconds=open_seconds,
        fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        rss_before=rss_before,
        rss_open=resources.rss_start,
        rss_peak=resources.peak_rss,
        rss_end=resources.rss_end,
        cpu_seconds=resources.cpu,
        baseline=baseline,
        during=during,
    )


def _wait_caught_up(client: httpx.Client) -> None:
    """Until no read model lags behind the store (else their catching up with the
    conversations just created would slow the baseline's requests)."""
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while time.monotonic() < deadline:
        checks: dict[str, str] = client.get("/health/ready").json().get("checks", {})
        if not any(int(value) for key, value in checks.items() if key.endswith("_lag")):
            return
        time.sleep(0.2)
    raise TimeoutError("the read models did not catch up before the soak")


def _probe(client: httpx.Client, conversation_id: str, seconds: float) -> Probes:
    """`GET /health/` and `GET /v1/conversations/{id}` one after the other, with a
    short pause, for `seconds` (one warm-up of each first)."""
    health: list[float] = []
    reads: list[float] = []
    _timed(client, "/health/")
    _timed(client, f"/v1/conversations/{conversation_id}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or not health:
        health.append(_timed(client, "/health/"))
        reads.append(_timed(client, f"/v1/conversations/{conversation_id}"))
        time.sleep(PROBE_PAUSE_SECONDS)
    return Probes(health_ms=Sample.of(health), read_ms=Sample.of(reads))


def _timed(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    client.get(path).raise_for_status()
    return (time.perf_counter() - started) * 1000
