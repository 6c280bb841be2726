"""Fixtures giving tests real servers; the machinery lives in tests/servers.py."""

from __future__ import annotations

import faulthandler
import pathlib
from collections.abc import Iterator

import pytest

from tests.servers import (
    EmbeddedNatsFactory,
    NatsNames,
    ScratchDatabases,
    delete_stream,
    nats_server,
    postgres_server,
)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread a failed test left behind (an executor thread waiting on a server that is
    gone) keeps a serial run (PYTEST_WORKERS=0) from exiting, for ever: after two minutes,
    every thread's stack is printed and the process exits with 1. (xdist ends its own
    workers; a test that hangs is pytest-timeout's.)"""
    if hasattr(config, "workerinput"):
        # An xdist worker that is done waits for the others' last tests (minutes, when
        # one is a schemathesis run on a slow machine): xdist ends it, not this.
        return
    # fd 2, not a file object: when the timer fires, pytest has given fd 2 back to stderr.
    faulthandler.dump_traceback_later(120, exit=True, file=2)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The maintenance database of the run's server (embedded, or the one in the env)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def scratch_databases(postgres_server_url: str) -> Iterator[ScratchDatabases]:
    databases = ScratchDatabases(postgres_server_url)
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def session_database_url(scratch_databases: ScratchDatabases) -> str:
    """One empty database shared by the whole run (dropped at its end)."""
    return scratch_databases.create()


@pytest.fixture
def database_url(scratch_databases: ScratchDatabases) -> Iterator[str]:
    """A new empty database for this test alone."""
    url = scratch_databases.create()
    yield url
    scratch_databases.drop(url)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with nats_server() as url:
        yield url


@pytest.fixture
def nats_names(nats_url: str) -> Iterator[NatsNames]:
    """A stream name and subject prefix of this test's own; the stream is deleted after it."""
    names = NatsNames.new()
    yield names
    delete_stream(nats_url, names.stream)


@pytest.fixture
def sqlite_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "events.sqlite"


@pytest.fixture
def embedded_nats_factory(tmp_path: pathlib.Path) -> Iterator[EmbeddedNatsFactory]:
    """Starts private nats-servers (for tests that kill or restart one)."""
    factory = EmbeddedNatsFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
