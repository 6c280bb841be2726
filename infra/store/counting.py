"""Counting the stored events in a range of global positions (the relay's stream repair
compares the count with what the JetStream stream holds)."""

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.sql import SQL, Identifier


def count_events(recorder: ApplicationRecorder, *, after: int, up_to: int) -> int:
    """How many events are stored with a global position in (`after`, `up_to`]."""
    if up_to <= after:
        return 0
    if isinstance(recorder, PostgresApplicationRecorder):
        table = SQL("{}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )
        query = SQL(
            "SELECT count(*) FROM {} WHERE notification_id > %s AND notification_id <= %s"
        ).format(table)
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, (after, up_to))
            row = cursor.fetchone()
        assert row is not None
        return int(row["count"])
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement = (
            f"SELECT count(*) AS n FROM {recorder.events_table_name} "  # noqa: S608
            "WHERE rowid > ? AND rowid <= ?"
        )
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, (after, up_to))
            return int(cursor.fetchone()["n"])
    raise TypeError(f"unsupported recorder {type(recorder).__name__}")


def first_position(recorder: ApplicationRecorder) -> int:
    """The global position of the first stored event (0 when the store is empty)."""
    first = recorder.select_notifications(start=None, limit=1)
    return first[0].id if first else 0
