"""A view's write transaction, on SQLite and on PostgreSQL.

On PostgreSQL the statements of a batch are held and sent together (`HeldSql`); what
a read model sees must not change: reads inside the batch see the writes before them,
and a statement that fails fails the whole batch, its tracking record included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from tests.backends import BACKENDS, database_url_for
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import store_environment
from threadlog.projections.views import View, ViewSchema, open_view

UPSTREAM = "threadlog"
SCHEMA = ViewSchema(
    tables=("notes",),
    statements=("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",),
)


@pytest.fixture(params=BACKENDS)
def view(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[View]:
    settings = Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    opened, factory = open_view("notes", SCHEMA, store_environment(settings), tmp_path / "views")
    yield opened
    factory.close()


def notes(view: View) -> list[dict[str, Any]]:
    with view.read() as sql:
        sql.execute("SELECT id, body FROM notes ORDER BY id")
        return [dict(row) for row in sql.fetchall()]


def test_a_read_inside_a_batch_sees_the_writes_before_it(view: View) -> None:
    with view.write(Tracking(UPSTREAM, 1)) as sql:
        sql.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "first"))
        sql.execute("UPDATE notes SET body = ? WHERE id = ?", ("first, edited", 1))
        sql.execute("SELECT body FROM notes WHERE id = ?", (1,))
        row = sql.fetchone()
        sql.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (2, "second"))

    assert row is not None and row["body"] == "first, edited"
    assert notes(view) == [{"id": 1, "body": "first, edited"}, {"id": 2, "body": "second"}]
    assert view.max_tracking_id(UPSTREAM) == 1


def test_a_failing_statement_fails_the_whole_batch_and_its_tracking(view: View) -> None:
    with view.write(Tracking(UPSTREAM, 1)) as sql:
        sql.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "kept"))

    with pytest.raises(IntegrityError), view.write(Tracking(UPSTREAM, 2)) as sql:
        sql.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (2, "lost"))
        sql.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "duplicate"))

    assert notes(view) == [{"id": 1, "body": "kept"}]
    assert view.max_tracking_id(UPSTREAM) == 1


def test_values_are_stored_as_given_quotes_and_percent_signs_included(view: View) -> None:
    body = 'it\'s 100% "quoted"; -- not a comment\\n\N{SNOWMAN}'
    with view.write(Tracking(UPSTREAM, 1)) as sql:
        sql.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, body))

    assert notes(view) == [{"id": 1, "body": body}]
