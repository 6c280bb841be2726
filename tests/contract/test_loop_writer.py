"""PostgreSQL's group-commit writer, on the event loop with a connection of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from eventsourcing.persistence import Recording

from tests.contract.test_flusher import run_with
from tests.contract.test_store import CAUSE, run_with_tokens
from threadlog.domain.application import ConversationService
from threadlog.domain.conversation import Conversation
from threadlog.domain.events import TokenStreamed
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import EventLog, open_service, topics_of
from threadlog.infra.store.loop_writer import (
    APPLICATION_NAME,
    LoopEventWriter,
    group_commit_writer,
)
from threadlog.infra.store.postgres import ColumnArraysPostgresApplicationRecorder
from threadlog.infra.store.writer import EventWriter

T = TypeVar("T")


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[ConversationService]:
    store = open_service(Settings(data_dir=tmp_path, database_url=database_url))
    yield store
    store.close()


def writer_of(service: ConversationService, *, outage_seconds: float = 5) -> LoopEventWriter:
    recorder = service.recorder
    assert isinstance(recorder, ColumnArraysPostgresApplicationRecorder)
    return LoopEventWriter(service, recorder, outage_seconds=outage_seconds)


def token(live: Conversation, delta: str) -> None:
    live.stream_token(run_id=live.active_run_id or "", part=0, delta=delta, cause=CAUSE)


def deltas(service: ConversationService, live: Conversation) -> list[str]:
    tokens = EventLog(service).read(live.id, topics=topics_of(TokenStreamed))
    return [t.event.delta for t in tokens]  # type: ignore[attr-defined]


def test_postgresql_gets_the_loop_writer_and_sqlite_the_thread(
    service: ConversationService, tmp_path: Path
) -> None:
    assert isinstance(group_commit_writer(service), LoopEventWriter)
    sqlite = open_service(Settings(data_dir=tmp_path / "sqlite"))
    try:
        assert isinstance(group_commit_writer(sqlite), EventWriter)
    finally:
        sqlite.close()


def test_commit_listeners_hear_of_exactly_what_it_stored(service: ConversationService) -> None:
    live = run_with_tokens(service, [])
    heard: list[list[Recording]] = []  # type: ignore[type-arg]
    service.on_commit(lambda recordings: heard.append(list(recordings)))
    writer = writer_of(service)

    async def append() -> list[Recording]:  # type: ignore[type-arg]
        token(live, "a")
        token(live, "b")
        return await writer.append(live.collect_events())

    stored = run_with(writer, append)
    assert heard == [stored]
    assert [r.notification.originator_version for r in stored] == [
        r.domain_event.originator_version for r in stored
    ]
    assert [r.notification.id for r in stored] == [
        e.global_position for e in EventLog(service).read(live.id)[-2:]
    ]


def test_a_writer_whose_connection_was_ended_reconnects_and_stores_the_next_flush(
    service: ConversationService, database_url: str
) -> None:
    live = run_with_tokens(service, [])
    writer = writer_of(service)

    async def append_around_a_lost_connection() -> None:
        token(live, "a")
        await writer.append(live.collect_events())
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            )
        token(live, "b")
        await writer.append(live.collect_events())

    run_with(writer, append_around_a_lost_connection)
    assert deltas(service, live) == ["a", "b"]


def test_close_stores_what_was_submitted_before_it(service: ConversationService) -> None:
    lives = [run_with_tokens(service, []) for _ in range(3)]
    writer = writer_of(service)

    async def submit_and_close() -> None:
        await writer.open()
        for live in lives:
            token(live, "a")
            writer.submit(live.collect_events())
        await writer.close()

    asyncio.run(submit_and_close())
    assert [deltas(service, live) for live in lives] == [["a"]] * 3


def test_a_closed_writer_refuses_events(service: ConversationService) -> None:
    live = run_with_tokens(service, [])
    token(live, "a")

    async def submit() -> None:
        writer_of(service).submit(live.collect_events())

    with pytest.raises(RuntimeError, match="not open"):
        asyncio.run(submit())


def test_a_writer_refuses_events_from_another_event_loop(service: ConversationService) -> None:
    live = run_with_tokens(service, [])
    token(live, "a")
    writer = writer_of(service)

    def submit_elsewhere() -> None:
        async def submit() -> None:
            writer.submit(live.collect_events())

        asyncio.run(submit())

    async def from_another_loop() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            await asyncio.to_thread(submit_elsewhere)

    run_with(writer, from_another_loop)
