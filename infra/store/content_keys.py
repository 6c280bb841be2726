"""Where content keys live: one row per key, its secret destroyable.

Keys cannot live in the event store (events are never changed or deleted): this is
a plain table next to it, `content_keys` in the events' PostgreSQL database, or its
own SQLite file. Erasing an owner's content sets every one of their keys' `secret`
to NULL and records when; the row stays, so a sealed value names a key that is known
to be erased rather than one that never existed.
"""

import datetime
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from psycopg_pool import ConnectionPool

_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS content_keys ("
    "key_id TEXT PRIMARY KEY, owner TEXT NOT NULL, secret BYTEA, "
    "created_at TIMESTAMPTZ NOT NULL, erased_at TIMESTAMPTZ)",
    "CREATE INDEX IF NOT EXISTS content_keys_owner ON content_keys (owner)",
)
_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS content_keys ("
    "key_id TEXT PRIMARY KEY, owner TEXT NOT NULL, secret BLOB, "
    "created_at TEXT NOT NULL, erased_at TEXT)",
    "CREATE INDEX IF NOT EXISTS content_keys_owner ON content_keys (owner)",
)
# Serialises CREATE TABLE IF NOT EXISTS across processes starting together.
_SCHEMA_LOCK = 7_401_202_611


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    owner: str
    secret: bytes | None  # None once erased


class KeyTable(Protocol):
    def active_key(self, owner: str) -> StoredKey | None: ...

    def add(self, key: StoredKey) -> None: ...

    def get(self, key_ids: list[str]) -> list[StoredKey]: ...

    def erase(self, owner: str) -> int: ...

    def close(self) -> None: ...


def _now() -> str:
    # ISO 8601: SQLite keeps it as text, PostgreSQL reads it into its TIMESTAMPTZ column.
    return datetime.datetime.now(datetime.UTC).isoformat()


_ACTIVE = (
    "SELECT key_id, secret FROM content_keys "
    "WHERE owner = ? AND erased_at IS NULL ORDER BY created_at DESC LIMIT 1"
)
_ADD = "INSERT INTO content_keys (key_id, owner, secret, created_at) VALUES (?, ?, ?, ?)"
_GET = "SELECT key_id, owner, secret FROM content_keys WHERE key_id IN ({marks})"
_ERASE = (
    "UPDATE content_keys SET secret = NULL, erased_at = ? WHERE owner = ? AND erased_at IS NULL"
)

_Rows = list[tuple[Any, ...]]


class _Statements:
    """The key table's statements, written once (`?` placeholders); a backend runs them."""

    def _run(self, query: str, params: Sequence[Any]) -> tuple[_Rows, int]:
        """The rows a statement returns (none for a change) and how many rows it changed."""
        raise NotImplementedError

    def active_key(self, owner: str) -> StoredKey | None:
        rows, _ = self._run(_ACTIVE, (owner,))
        return StoredKey(rows[0][0], owner, bytes(rows[0][1])) if rows else None

    def add(self, key: StoredKey) -> None:
        self._run(_ADD, (key.key_id, key.owner, key.secret, _now()))

    def get(self, key_ids: list[str]) -> list[StoredKey]:
        marks = ", ".join("?" for _ in key_ids)
        rows, _ = self._run(_GET.format(marks=marks), key_ids)
        return [StoredKey(r[0], r[1], None if r[2] is None else bytes(r[2])) for r in rows]

    def erase(self, owner: str) -> int:
        _, changed = self._run(_ERASE, (_now(), owner))
        return changed


class PostgresKeyTable(_Statements):
    def __init__(self, url: str, *, max_size: int = 4) -> None:
        # Checked on checkout and reconnected within seconds: after a PostgreSQL restart
        # a request gets a live connection (or a prompt error), not a dead one.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=True,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            reconnect_timeout=2.0,
            timeout=5.0,
        )
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _PG_SCHEMA:
                conn.execute(statement)

    def _run(self, query: str, params: Sequence[Any]) -> tuple[_Rows, int]:
        with self._pool.connection() as conn:
            cursor = conn.execute(query.replace("?", "%s"), params)
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount

    def close(self) -> None:
        self._pool.close()


class SQLiteKeyTable(_Statements):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._lock = threading.Lock()
        with self._lock:
            for statement in _SQLITE_SCHEMA:
                self._db.execute(statement)

    def _run(self, query: str, params: Sequence[Any]) -> tuple[_Rows, int]:
        with self._lock:
            cursor = self._db.execute(query, params)
            return cursor.fetchall(), cursor.rowcount

    def close(self) -> None:
        self._db.close()


def open_key_table(database_url: str | None, sqlite_path: Path) -> KeyTable:
    if database_url is None:
        return SQLiteKeyTable(sqlite_path)
    return PostgresKeyTable(database_url)
