"""Benchmarks 3, 4 and 6 share one large store: it is generated once, then every read
model is rebuilt over it, then the app serves reads from those read models, then a
server of its own exports the whole log as NDJSON."""

import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.access import served
from bench.export import ExportConfig, ExportResult, run_export
from bench.measure import progress
from bench.population import Population, PopulationConfig, populate
from bench.read_latency import ReadLatencyConfig, ReadLatencyResult, run_read_latency
from bench.rebuild import RebuildConfig, RebuildResult, run_rebuild
from bench.servers import Servers
from tests.support import LiveServer
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service, store_environment
from threadlog.projections.read_models import ReadModels

READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True, kw_only=True)
class StoreReadsConfig:
    population: PopulationConfig
    rebuild: RebuildConfig
    reads: ReadLatencyConfig
    export: ExportConfig


@dataclass(frozen=True, kw_only=True)
class StoreReadsResult:
    population: Population
    rebuild: RebuildResult
    reads: ReadLatencyResult
    export: ExportResult


def run_store_reads(servers: Servers, config: StoreReadsConfig) -> StoreReadsResult:
    url = servers.databases.create()
    store_settings = Settings(database_url=url)
    service = open_service(store_settings)
    try:
        size = config.population
        progress(f"population: {size.conversations:,} conversations, {size.events:,} events")
        population = populate(url, size)
        progress(f"population: stored at {population.rate:,.0f} events/s")
        with tempfile.TemporaryDirectory(prefix="threadlog-bench-") as data_dir:
            read_models_dir = Path(data_dir) / "read_models"
            rebuild = run_rebuild(service, store_settings, config.rebuild, read_models_dir)
            token = secrets.token_hex(6)
            settings = store_settings.replace(
                data_dir=Path(data_dir),
                nats_url=servers.nats_url,
                nats_stream=f"BENCH_{token}",
                nats_subject_prefix=f"b{token}",
                relay=False,
                log_level="WARNING",
                log_format="json",
            )
            direct = ReadModels.open(service, store_environment(store_settings), read_models_dir)
            try:
                with LiveServer(served(settings)) as server, server.client() as client:
                    _wait_until_ready(client)
                    reads = run_read_latency(
                        client,
                        direct,
                        population.deep_conversation,
                        size.conversations,
                        config.reads,
                    )
            finally:
                direct.close()
                servers.release_stream(settings.nats_stream)
        progress(f"export: the audit log as NDJSON, {population.events:,} events")
        export = run_export(servers, url, config.export)
        return StoreReadsResult(population=population, rebuild=rebuild, reads=reads, export=export)
    finally:
        service.close()
        servers.databases.drop(url)


def _wait_until_ready(client: httpx.Client) -> None:
    """Waits until every read model of the app has no lag (they were rebuilt already)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        checks: dict[str, str] = client.get("/health/ready").json().get("checks", {})
        lags = [int(value) for key, value in checks.items() if key.endswith("_lag")]
        if lags and not any(lags):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the read models did not catch up: {checks}")
        time.sleep(0.1)
