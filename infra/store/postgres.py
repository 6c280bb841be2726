"""The PostgreSQL application recorder, with a faster insert.

eventsourcing 9.5.6 sends a save as one array of a composite type, which psycopg
builds row by row in Python (about half of a token flush's time went there), and
sends the transaction's five statements through psycopg's pipeline, whose per-
statement bookkeeping in Python cost more than the round trips it saves. This
recorder sends four arrays of plain columns in binary instead, unnested by the
server (the same INSERT … SELECT FROM unnest … RETURNING notification_id), after the
same table lock and NOTIFY: BEGIN, the lock and the NOTIFY go as one simple query,
then the INSERT, then COMMIT. Measured here: 75k rows/s against 34k with 64-row
transactions, and a one-event commit's client CPU about halved (docs/benchmarks.md).
"""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Connection, Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composable, Identifier

from threadlog.infra import tracing


class ColumnArraysPostgresApplicationRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._insert_columns = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(events_table_name),
            id_type=Identifier(datastore.originator_id_type),
        )
        self._begin_and_lock_sql: bytes | None = None

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        with (
            tracing.span("store.insert", events=len(stored_events)),
            self.datastore.get_connection() as conn,
            conn.cursor() as curs,
        ):
            try:
                curs.execute(self._begin_and_lock(conn))
                self._insert_rows(curs, stored_events)
                ids = [row["notification_id"] for row in curs.fetchall()]
                curs.execute(b"COMMIT")
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        return ids

    def _begin_and_lock(self, conn: Connection[DictRow]) -> bytes:
        """BEGIN, the table lock (insert order = commit order, see eventsourcing's
        `_lock_table`) and the NOTIFY, as one simple query: one round trip."""
        if self._begin_and_lock_sql is None:
            notify = SQL("NOTIFY {0}").format(Identifier(self.channel_name))
            statements = [SQL("BEGIN"), *self.lock_table_statements, notify]
            self._begin_and_lock_sql = b"; ".join(_as_bytes(s, conn) for s in statements)
        return self._begin_and_lock_sql

    def _insert_rows(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> None:
        as_id = _uuid if self.datastore.originator_id_type == "uuid" else str
        curs.execute(
            self._insert_columns,
            (
                [as_id(e.originator_id) for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
            prepare=True,
        )


def _as_bytes(statement: object, conn: Connection[DictRow]) -> bytes:
    if isinstance(statement, Composable):
        return statement.as_bytes(conn)
    return statement.encode() if isinstance(statement, str) else bytes(statement)  # type: ignore[call-overload]


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
