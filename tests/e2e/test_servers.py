"""The test servers are real and each test gets its own piece of them."""

from __future__ import annotations

import nats
import psycopg
import pytest

from tests.servers import DATABASE_PREFIX, NatsNames, database_name

_seen_databases: set[str] = set()


def test_database_url_answers_queries(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SELECT 1").fetchone()
    assert row == (1,)


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_a_new_empty_database(database_url: str, attempt: int) -> None:
    name = database_name(database_url)
    with psycopg.connect(database_url) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        connection.execute("CREATE TABLE marker (id int)")
    assert name.startswith(DATABASE_PREFIX)
    assert name not in _seen_databases
    assert tables == (0,)
    _seen_databases.add(name)


async def test_jetstream_deduplicates_by_message_id(nats_url: str, nats_names: NatsNames) -> None:
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        await js.add_stream(name=nats_names.stream, subjects=nats_names.subjects)
        headers = {"Nats-Msg-Id": "message-1"}
        first = await js.publish(nats_names.subject("greeting"), b"hello", headers=dict(headers))
        second = await js.publish(nats_names.subject("greeting"), b"hello", headers=dict(headers))
        info = await js.stream_info(nats_names.stream)
    finally:
        await connection.close()
    assert not first.duplicate
    assert second.duplicate is True
    assert info.state.messages == 1
