"""`threadlog serve` on PostgreSQL runs the relay and the projections in a background
process it starts, restarts and stops (infra/background.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nats
import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from tests.e2e.test_serve import ServeProcess, alive, workdir  # noqa: F401 (a fixture)
from tests.servers import NatsNames
from tests.support import ADMIN_KEY, create_conversation, post_message
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.stream.embedded import free_port

SECONDS = 60.0  # a busy machine takes seconds to start a Python process


@pytest.fixture
def serve(
    workdir: Path,  # noqa: F811
    database_url: str,
    nats_url: str,
    nats_names: NatsNames,
) -> Iterator[ServeProcess]:
    server = ServeProcess(
        workdir,
        free_port(),
        {
            "THREADLOG_DATABASE_URL": database_url,
            "THREADLOG_NATS_URL": nats_url,
            "THREADLOG_NATS_STREAM": nats_names.stream,
            "THREADLOG_NATS_SUBJECT_PREFIX": nats_names.subject_prefix,
            "THREADLOG_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        },
    )
    yield server
    if server.process.poll() is None:
        server.stop()


def background_pid(server_pid: int) -> int | None:
    """The background process `serve` started (multiprocessing's spawn), if running."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == server_pid and b"spawn_main" in command and alive(int(entry.name)):
            return int(entry.name)
    return None


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SECONDS
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def projected(client: httpx.Client, conversation_id: str) -> int:
    """A new message's run is in the read models the background process keeps: the
    message's global position."""
    posted = post_message(client, conversation_id, "hello")
    answer = client.get(
        f"/v1/runs/{posted['run_id']}", params={"min_position": posted["global_position"]}
    )
    assert answer.status_code == 200, answer.text
    return int(posted["global_position"])


def test_serve_on_postgresql_relays_and_projects_in_a_background_process_it_stops(
    serve: ServeProcess, nats_names: NatsNames, nats_url: str
) -> None:
    background = background_pid(serve.process.pid)
    assert background is not None
    with httpx.Client(
        base_url=serve.base_url, timeout=15, headers={"X-API-Key": ADMIN_KEY}
    ) as client:
        # Ready only once the background process follows the log (serve waited for it).
        assert client.get("/health/ready").json()["checks"]["background_process"] == "ok"
        conversation_id = create_conversation(client, title="two processes")
        posted_at = projected(client, conversation_id)
        listed = client.get("/v1/conversations").json()["items"]
        assert conversation_id in [item["id"] for item in listed]
    wait_for(lambda: relayed(nats_url, nats_names) >= posted_at, "the relay published the events")
    serve.stop()
    assert not alive(background)
    # Only the background process relayed: the API process started no relay of its own.
    assert serve.log.read_text().count('"event": "relay.started"') == 1


def relayed(nats_url: str, names: NatsNames) -> int:
    """How many events the relay published to the test's stream."""

    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            return int((await nc.jetstream().stream_info(names.stream)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def test_a_background_process_that_ends_is_started_again(serve: ServeProcess) -> None:
    first = background_pid(serve.process.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: background_pid(serve.process.pid) not in (None, first),
        "a new background process",
    )
    with httpx.Client(
        base_url=serve.base_url, timeout=15, headers={"X-API-Key": ADMIN_KEY}
    ) as client:
        wait_for(
            lambda: client.get("/health/ready").json()["checks"]["background_process"] == "ok",
            "ready again",
        )
        projected(client, create_conversation(client))


def test_the_background_process_ends_when_serve_is_killed(serve: ServeProcess) -> None:
    background = background_pid(serve.process.pid)
    assert background is not None
    serve.process.kill()
    serve.process.wait(timeout=10)
    wait_for(lambda: not alive(background), "the orphaned background process ended")


def test_the_api_process_tells_the_background_process_its_commits_without_a_notify(
    serve: ServeProcess, database_url: str
) -> None:
    """A NOTIFY costs every listening session a transaction: the API process's commits
    reach the background process over a pipe instead."""
    service = open_service(Settings(database_url=database_url))
    channel = Identifier(service.recorder.channel_name)  # type: ignore[attr-defined]
    service.close()
    with (
        psycopg.connect(database_url, autocommit=True) as probe,
        httpx.Client(
            base_url=serve.base_url, timeout=15, headers={"X-API-Key": ADMIN_KEY}
        ) as client,
    ):
        probe.execute(SQL("LISTEN {0}").format(channel))
        projected(client, create_conversation(client))  # the background process read it
        probe.execute(SQL("NOTIFY {0}, 'marker'").format(channel))
        heard = [n.payload for n in probe.notifies(timeout=10, stop_after=1)]
    assert heard == ["marker"]
