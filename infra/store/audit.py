"""Tamper evidence: each conversation's hash chain, recomputed from the stored records.

Verification reads the records as written (their stored schema version and data,
before any upcasting), because that is what was hashed. It walks a conversation's
events in position order and reports the first broken link:

- ``missing_event``: a position is absent (an event was deleted), or the stream does
  not start at 1;
- ``unreadable``: a record's state no longer decodes;
- ``hash_mismatch``: an event's fields no longer hash to its stored ``hash`` (it was
  edited);
- ``broken_link``: an event's ``prev_hash`` is not its predecessor's ``hash`` (an
  event was replaced, with a recomputed hash, or moved).

Deleting a conversation's last events leaves a shorter chain that still verifies:
the chain proves what is there was not altered, not that nothing came after it.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.sql import SQL, Identifier

from threadlog.domain.application import ConversationService
from threadlog.domain.chain import GENESIS_HASH, chain_hash
from threadlog.domain.events import ENVELOPE_FIELDS, Cause, chain_document

Problem = Literal["missing_event", "unreadable", "hash_mismatch", "broken_link"]

SCAN_BATCH = 5000


@dataclass(frozen=True, slots=True)
class WrittenEvent:
    """An event as it was written: its chain document and the hash stored with it."""

    document: dict[str, Any]
    hash: str

    @property
    def position(self) -> int:
        return int(self.document["position"])

    @property
    def prev_hash(self) -> str:
        return str(self.document["prev_hash"])


def written_event(mapper: Mapper[UUID], stored: StoredEvent) -> WrittenEvent:
    """Decodes a stored record without upcasting it; raises ValueError when it cannot."""
    state_bytes = stored.state
    try:
        if mapper.cipher:
            state_bytes = mapper.cipher.decrypt(state_bytes)
        if mapper.compressor:
            state_bytes = mapper.compressor.decompress(state_bytes)
        state: dict[str, Any] = mapper.transcoder.decode(state_bytes)
        document = chain_document(
            type_name=stored.topic.rpartition(":")[2],
            event_id=state["event_id"],
            conversation_id=UUID(str(stored.originator_id)),
            position=stored.originator_version,
            timestamp=state["timestamp"],
            cause=Cause(
                actor=state["actor"],
                correlation_id=state["correlation_id"],
                causation_id=state["causation_id"],
            ),
            version=int(state.get("class_version", 1)),
            data={
                key: value
                for key, value in state.items()
                if key not in ENVELOPE_FIELDS and key != "class_version"
            },
            prev_hash=state["prev_hash"],
        )
        return WrittenEvent(document=document, hash=str(state["hash"]))
    except Exception as error:
        raise ValueError(f"the stored record does not decode: {error!r}") from error


@dataclass(frozen=True, slots=True)
class BrokenLink:
    position: int
    problem: Problem
    detail: str


@dataclass(frozen=True, slots=True)
class Verification:
    conversation_id: UUID
    events: int
    last_position: int
    broken: BrokenLink | None

    @property
    def intact(self) -> bool:
        return self.broken is None


class ChainCheck:
    """Verifies one conversation's records, fed in position order."""

    def __init__(self, conversation_id: UUID, mapper: Mapper[UUID]) -> None:
        self.conversation_id = conversation_id
        self._mapper = mapper
        self._events = 0
        self._last_position = 0
        self._last_hash = GENESIS_HASH
        self._broken: BrokenLink | None = None

    def add(self, stored: StoredEvent) -> None:
        position = stored.originator_version
        expected = self._last_position + 1
        self._events += 1
        self._last_position = position
        if position != expected:
            self._note(expected, "missing_event", f"position {expected} is missing")
        try:
            written = written_event(self._mapper, stored)
        except ValueError as error:
            self._note(position, "unreadable", str(error))
            return
        if chain_hash(written.document) != written.hash:
            self._note(position, "hash_mismatch", "the event's fields do not match its hash")
        elif written.prev_hash != self._last_hash and position == expected:
            self._note(position, "broken_link", "prev_hash is not the hash of the event before it")
        self._last_hash = written.hash

    def _note(self, position: int, problem: Problem, detail: str) -> None:
        if self._broken is None:
            self._broken = BrokenLink(position=position, problem=problem, detail=detail)

    def result(self) -> Verification:
        return Verification(
            conversation_id=self.conversation_id,
            events=self._events,
            last_position=self._last_position,
            broken=self._broken,
        )


def describe(verification: Verification) -> str:
    """One line for people: the verdict and, when broken, where and why."""
    broken = verification.broken
    head = f"{verification.conversation_id}\t{verification.events} events"
    if broken is None:
        return f"{head}\tintact"
    return f"{head}\tBROKEN at position {broken.position}: {broken.problem} ({broken.detail})"


def verify_records(
    conversation_id: UUID, mapper: Mapper[UUID], records: Iterable[StoredEvent]
) -> Verification:
    check = ChainCheck(conversation_id, mapper)
    for stored in records:
        check.add(stored)
    return check.result()


Progress = Callable[[int, int], None]


class ChainAuditor:
    """Verifies conversations' chains straight from the store's events table."""

    def __init__(self, service: ConversationService) -> None:
        self._mapper = service.mapper
        recorder = service.recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            self._scan: _Scan = _PostgresScan(recorder)
        elif isinstance(recorder, SQLiteApplicationRecorder):
            self._scan = _SQLiteScan(recorder)
        else:
            raise TypeError(f"unsupported recorder {type(recorder).__name__}")

    def verify(self, conversation_id: UUID) -> Verification | None:
        """The verification of one conversation; None when it has no events."""
        records = list(self._scan.records(conversation_id))
        if not records:
            return None
        return verify_records(conversation_id, self._mapper, records)

    def verify_all(self, progress: Progress | None = None) -> Iterator[Verification]:
        """Every conversation, one pass over the table in (conversation, position) order."""
        total = self._scan.count()
        done = 0
        check: ChainCheck | None = None
        for stored in self._scan.everything():
            originator = UUID(str(stored.originator_id))
            if check is None or check.conversation_id != originator:
                if check is not None:
                    yield check.result()
                check = ChainCheck(originator, self._mapper)
            check.add(stored)
            done += 1
            if progress is not None and done % SCAN_BATCH == 0:
                progress(done, total)
        if check is not None:
            yield check.result()
        if progress is not None:
            progress(done, max(done, total))


class _Scan:
    def records(self, conversation_id: UUID) -> list[StoredEvent]:
        raise NotImplementedError

    def page(self, after: tuple[UUID, int] | None) -> list[StoredEvent]:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def everything(self) -> Iterator[StoredEvent]:
        """Every record, keyset-paged so memory stays constant however big the table."""
        after: tuple[UUID, int] | None = None
        while page := self.page(after):
            yield from page
            last = page[-1]
            after = (UUID(str(last.originator_id)), last.originator_version)


class _PostgresScan(_Scan):
    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self._datastore = recorder.datastore
        self._table = SQL("{}.{}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )

    def _select(self, where: SQL, params: list[Any], limit: int | None) -> list[StoredEvent]:
        query = SQL("SELECT originator_id, originator_version, topic, state FROM {} ").format(
            self._table
        )
        query += where + SQL(" ORDER BY originator_id, originator_version")
        if limit is not None:
            query += SQL(" LIMIT %s")
            params = [*params, limit]
        with self._datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, params)
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in cursor.fetchall()
            ]

    def records(self, conversation_id: UUID) -> list[StoredEvent]:
        return self._select(SQL("WHERE originator_id = %s"), [conversation_id], None)

    def page(self, after: tuple[UUID, int] | None) -> list[StoredEvent]:
        if after is None:
            return self._select(SQL(""), [], SCAN_BATCH)
        return self._select(
            SQL("WHERE (originator_id, originator_version) > (%s, %s)"), list(after), SCAN_BATCH
        )

    def count(self) -> int:
        with self._datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(SQL("SELECT count(*) AS n FROM {}").format(self._table))
            row = cursor.fetchone()
            return int(row["n"]) if row else 0


class _SQLiteScan(_Scan):
    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self._datastore = recorder.datastore
        self._table = recorder.events_table_name

    def _select(self, where: str, params: list[Any], limit: int | None) -> list[StoredEvent]:
        query = (
            f"SELECT originator_id, originator_version, topic, state FROM {self._table} "  # noqa: S608
            f"{where} ORDER BY originator_id, originator_version"
        )
        if limit is not None:
            query += " LIMIT ?"
            params = [*params, limit]
        with self._datastore.transaction(commit=False) as cursor:
            cursor.execute(query, params)
            return [
                StoredEvent(
                    originator_id=UUID(row["originator_id"]),
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=row["state"],
                )
                for row in cursor.fetchall()
            ]

    def records(self, conversation_id: UUID) -> list[StoredEvent]:
        return self._select("WHERE originator_id = ?", [conversation_id.hex], None)

    def page(self, after: tuple[UUID, int] | None) -> list[StoredEvent]:
        if after is None:
            return self._select("", [], SCAN_BATCH)
        conversation_id, position = after
        return self._select(
            "WHERE originator_id > ? OR (originator_id = ? AND originator_version > ?)",
            [conversation_id.hex, conversation_id.hex, position],
            SCAN_BATCH,
        )

    def count(self) -> int:
        with self._datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT count(*) AS n FROM {self._table}")  # noqa: S608
            row = cursor.fetchone()
            return int(row["n"]) if row else 0
