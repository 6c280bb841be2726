"""Where read models live: a tracking recorder with the read model's own tables.

A view is one of eventsourcing's tracking recorders extended with the read model's
tables, so that `write(tracking)` changes the rows and records the tracking object
in one transaction: a batch of events is applied exactly once, or not at all.

- PostgreSQL: the same database as the events; the view's tables are prefixed with
  its name and its tracking table is `<name>_tracking`.
- SQLite: one file per read model, `<data dir>/read_models/<name>.sqlite` (its own
  `tracking` table), so projection writes never wait for the event store's write
  lock, and a rebuild may simply delete the file.

A read model whose `ViewSchema.version` differs from the one recorded beside its
tables (in `read_model_schemas`) has its tables dropped and recreated and its
tracking deleted when the view is opened: its runner then rebuilds it from the log.
"""

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog
from eventsourcing.persistence import InfrastructureFactory, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg.adapt import Transformer
from psycopg.sql import SQL, Identifier

log = structlog.get_logger(__name__)

Row = Mapping[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    """Times are stored as microseconds since the epoch: they sort the same on both backends."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, kw_only=True)
class ViewSchema:
    """A read model's tables: their names (cleared on rebuild) and portable DDL.

    Bump `version` when the tables or what the rows mean change: existing read
    models are then dropped and rebuilt from the log."""

    tables: tuple[str, ...]
    statements: tuple[str, ...]
    version: int = 1


SCHEMAS_TABLE = "read_model_schemas"
_UNVERSIONED = 1  # read models built before versions were recorded


class Sql:
    """A cursor inside a view's transaction; queries use `?` placeholders on both backends."""

    def __init__(self, cursor: Any, *, qmark: bool) -> None:
        self._cursor = cursor
        self._qmark = qmark

    def execute(self, query: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(query if self._qmark else query.replace("?", "%s"), params)

    def fetchall(self) -> list[Row]:
        return list(self._cursor.fetchall())

    def fetchone(self) -> Row | None:
        row: Row | None = self._cursor.fetchone()
        return row

    def flush(self) -> None:
        """Sends the statements held back, if any (see `HeldSql`)."""


HELD_BYTES = 256 * 1024
_ASYNCHRONOUS_COMMIT = b"SET LOCAL synchronous_commit TO OFF"


class HeldSql(Sql):
    """A PostgreSQL write transaction's cursor that sends statements together.

    A projection batch runs many statements whose results nobody reads; a round trip
    each dominated rebuilds. They are merged on the client (values as psycopg's SQL
    literals) and sent as one simple-protocol query when a result is fetched, when
    HELD_BYTES are held, and before the tracking record: the same statements in the
    same order and transaction, so an error still fails the whole batch. Not pipeline
    mode: psycopg's pipeline can stall on one statement larger than the socket buffer
    (docs/benchmarks.md), and a message can be that large.

    The transaction commits asynchronously (`synchronous_commit` off, for it alone):
    a crash of PostgreSQL may lose the last batches of a read model, rows and tracking
    record together, and the runner applies them again from its checkpoint; waiting
    for each commit's WAL flush made half of a rebuild's time on a busy disk.
    """

    def __init__(self, cursor: Any) -> None:
        super().__init__(cursor, qmark=False)
        self._literal = Transformer(cursor.connection).as_literal
        self._held: list[bytes] = [_ASYNCHRONOUS_COMMIT]
        self._held_bytes = 0
        self._last: tuple[str, Sequence[Any]] | None = None

    def execute(self, query: str, params: Sequence[Any] = ()) -> None:
        if self._last is not None:
            self._hold(*self._last)
        # The last statement waits unmerged: it may be one whose result is fetched.
        self._last = (query, params)

    def fetchall(self) -> list[Row]:
        self._run_last()
        return super().fetchall()

    def fetchone(self) -> Row | None:
        self._run_last()
        return super().fetchone()

    def _run_last(self) -> None:
        """Sends what was held, then the last statement on its own, for its result."""
        last, self._last = self._last, None
        self.flush()
        if last is not None:
            super().execute(*last)

    def _hold(self, query: str, params: Sequence[Any]) -> None:
        parts = _split(query)
        if len(parts) != len(params) + 1:
            raise TypeError(f"the query has {len(parts) - 1} placeholders, not {len(params)}")
        pieces = [parts[0]]
        for value, part in zip(params, parts[1:], strict=True):
            pieces += (self._literal(value), part)
        statement = b"".join(pieces)
        self._held.append(statement)
        self._held_bytes += len(statement)
        if self._held_bytes >= HELD_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._last is not None:
            self._hold(*self._last)
            self._last = None
        if not self._held:
            return
        merged = b";\n".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        # No parameters: psycopg sends it with the simple protocol, which takes many statements.
        self._cursor.execute(merged, prepare=False)


@functools.lru_cache(maxsize=256)
def _split(query: str) -> tuple[bytes, ...]:
    """A query's text around its `?` placeholders (`%%` is a literal `%`, as in psycopg)."""
    return tuple(part.replace("%%", "%").encode() for part in query.split("?"))


class View(Protocol):
    """What projections and readers need of a view, whatever the backend."""

    def write(self, tracking: Tracking) -> AbstractContextManager[Sql]: ...

    def read(self) -> AbstractContextManager[Sql]: ...

    def clear(self, application_name: str) -> None: ...

    def max_tracking_id(self, application_name: str) -> int | None: ...

    def has_tracking_id(self, application_name: str, notification_id: int | None) -> bool: ...

    def create_table(self) -> None: ...


class SQLiteView(SQLiteTrackingRecorder):
    def __init__(self, datastore: SQLiteDatastore, *, schema: ViewSchema) -> None:
        self.schema = schema
        super().__init__(datastore)

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.schema.statements]

    @contextmanager
    def write(self, tracking: Tracking) -> Iterator[Sql]:
        with self.datastore.transaction(commit=True) as cursor:
            yield Sql(cursor, qmark=True)
            self._insert_tracking(cursor, tracking)

    @contextmanager
    def read(self) -> Iterator[Sql]:
        with self.datastore.transaction(commit=False) as cursor:
            yield Sql(cursor, qmark=True)

    def clear(self, application_name: str) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            for table in self.schema.tables:
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names
            cursor.execute("DELETE FROM tracking WHERE application_name = ?", (application_name,))

    def upgrade(self, name: str) -> int | None:
        with self.datastore.transaction(commit=True) as cursor:
            return _upgrade(
                Sql(cursor, qmark=True),
                name,
                self.schema,
                "tracking",
                self.table_migration_identifier,
            )


class PostgresView(PostgresTrackingRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, schema: ViewSchema, tracking_table_name: str
    ) -> None:
        super().__init__(datastore, tracking_table_name=tracking_table_name)
        self.schema = schema
        self.sql_create_statements.extend(SQL(s).format() for s in schema.statements)

    @contextmanager
    def write(self, tracking: Tracking) -> Iterator[Sql]:
        with self.datastore.transaction(commit=True) as cursor:
            sql = HeldSql(cursor)
            yield sql
            sql.flush()
            self._insert_tracking(cursor, tracking)

    @contextmanager
    def read(self) -> Iterator[Sql]:
        with self.datastore.transaction(commit=False) as cursor:
            yield Sql(cursor, qmark=False)

    def clear(self, application_name: str) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            for table in self.schema.tables:
                cursor.execute(SQL("DELETE FROM {}").format(Identifier(table)))
            cursor.execute(
                SQL("DELETE FROM {} WHERE application_name = %s").format(
                    Identifier(self.tracking_table_name)
                ),
                (application_name,),
            )

    def upgrade(self, name: str) -> int | None:
        with self.datastore.transaction(commit=True) as cursor:
            return _upgrade(
                Sql(cursor, qmark=False),
                name,
                self.schema,
                self.tracking_table_name,
                self.table_migration_identifier,
            )


def _upgrade(
    sql: Sql, name: str, schema: ViewSchema, tracking_table: str, migration_row: str
) -> int | None:
    """Drops and recreates the tables of an outdated schema and deletes its tracking;
    returns the outdated version, or None when the schema is current or nothing had
    been built yet (a new read model, whose tables are replaced silently)."""
    sql.execute(
        f"CREATE TABLE IF NOT EXISTS {SCHEMAS_TABLE} "
        "(name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    sql.execute(f"SELECT version FROM {SCHEMAS_TABLE} WHERE name = ?", (name,))  # noqa: S608
    row = sql.fetchone()
    recorded = _UNVERSIONED if row is None else int(row["version"])
    outdated = recorded != schema.version
    built = False
    if outdated:
        # Every tracking row but eventsourcing's own (its table's migration marker).
        tracked = f"FROM {tracking_table} WHERE application_name <> ?"
        sql.execute(f"SELECT COUNT(*) AS batches {tracked}", (migration_row,))
        counted = sql.fetchone()
        built = counted is not None and int(counted["batches"]) > 0
        for table in schema.tables:
            sql.execute(f"DROP TABLE IF EXISTS {table}")
        sql.execute(f"DELETE {tracked}", (migration_row,))
        for statement in schema.statements:
            sql.execute(statement)
    if outdated or row is None:
        sql.execute(
            f"INSERT INTO {SCHEMAS_TABLE} (name, version) VALUES (?, ?) "  # noqa: S608
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            (name, schema.version),
        )
    return recorded if built else None


def open_view(
    name: str, schema: ViewSchema, store_env: Mapping[str, str], sqlite_dir: Path
) -> tuple[View, Any]:
    """The view of read model `name`, next to the events described by `store_env`.

    Returns the view and the infrastructure factory that owns its connections
    (close it when done with the view).
    """
    env = dict(store_env)
    env.pop("APPLICATION_RECORDER_TOPIC", None)
    env["CREATE_TABLE"] = "y"
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        sqlite_dir.mkdir(parents=True, exist_ok=True)
        env["SQLITE_DBNAME"] = str(sqlite_dir / f"{name}.sqlite")
    else:
        # Two kept open per read model (its runner, a reader); more only under load.
        env["POSTGRES_POOL_SIZE"] = "2"
        env["POSTGRES_MAX_OVERFLOW"] = "6"
    factory: Any = InfrastructureFactory[TrackingRecorder].construct(env=Environment(name, env))
    datastore = factory.datastore
    view: SQLiteView | PostgresView
    if isinstance(datastore, PostgresDatastore):
        view = PostgresView(datastore, schema=schema, tracking_table_name=f"{name}_tracking")
    elif isinstance(datastore, SQLiteDatastore):
        view = SQLiteView(datastore, schema=schema)
    else:
        raise TypeError(f"unsupported datastore {type(datastore).__name__}")
    view.create_table()
    outdated = view.upgrade(name)
    if outdated is not None:
        log.warning("projection.schema_changed", projection=name, old=outdated, new=schema.version)
    return view, factory
