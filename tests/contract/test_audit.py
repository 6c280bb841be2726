"""Tamper evidence: the hash chain re-verified from the stored records, on both backends.

The tampering tests change the events table directly, as an attacker with database
access would, and expect the verifier to find and locate the change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic

from tests.backends import BACKENDS, database_url_for
from threadlog.domain.application import ConversationService
from threadlog.domain.chain import chain_hash
from threadlog.domain.events import Cause, RunCompleted, chain_document
from threadlog.infra.settings import Settings
from threadlog.infra.store.audit import ChainAuditor
from threadlog.infra.store.eventstore import open_service

CAUSE = Cause(actor="user:alice", correlation_id="req-1")


class Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = open_service(settings)
        self.auditor = ChainAuditor(self.service)

    def execute(self, statement: str, params: tuple[Any, ...]) -> int:
        """Runs one statement on the events table as a database user would."""
        recorder = self.service.recorder
        table = recorder.events_table_name  # type: ignore[attr-defined]
        if isinstance(recorder, PostgresApplicationRecorder):
            assert self.settings.database_url is not None
            with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
                sql = statement.replace("?", "%s").replace("{table}", table)
                return conn.execute(sql, params).rowcount
        params = tuple(p.hex if isinstance(p, UUID) else p for p in params)
        with sqlite3.connect(self.settings.sqlite_path) as conn:
            return conn.execute(statement.replace("{table}", table), params).rowcount


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    settings = Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))
    opened = Store(settings)
    yield opened
    opened.service.close()


def conversation_with_a_run(service: ConversationService, content: str = "hello") -> UUID:
    """Five events: started, posted, run started, one token, run failed."""
    conversation_id = service.start_conversation(
        owner="alice", agent="demo", title="t", metadata={}, cause=CAUSE
    ).value.id
    posted = service.post_message(
        conversation_id, content=content, client_message_id=None, model="demo", cause=CAUSE
    ).value
    live = service.get_conversation(conversation_id)
    live.stream_token(run_id=posted.run_id, part=0, delta="to", cause=CAUSE)
    live.fail_run(run_id=posted.run_id, error="model_error", message="boom", cause=CAUSE)
    service.save(live)
    return conversation_id


def test_an_untouched_conversation_verifies(store: Store) -> None:
    conversation_id = conversation_with_a_run(store.service)
    verification = store.auditor.verify(conversation_id)
    assert verification is not None
    assert verification.intact
    assert (verification.events, verification.last_position) == (5, 5)


def test_an_unknown_conversation_has_nothing_to_verify(store: Store) -> None:
    assert store.auditor.verify(UUID(int=7)) is None


def test_an_edited_event_is_found_at_its_position(store: Store) -> None:
    conversation_id = conversation_with_a_run(store.service, content="pay alice 10")
    changed = store.execute(
        "UPDATE {table} SET state = "
        + (
            "convert_to(replace(convert_from(state, 'UTF8'), 'alice 10', 'alice 99'), 'UTF8')"
            if store.settings.database_url
            else "CAST(replace(CAST(state AS TEXT), 'alice 10', 'alice 99') AS BLOB)"
        )
        + " WHERE originator_id = ? AND originator_version = ?",
        (conversation_id, 2),
    )
    assert changed == 1
    verification = store.auditor.verify(conversation_id)
    assert verification is not None and verification.broken is not None
    assert (verification.broken.position, verification.broken.problem) == (2, "hash_mismatch")


def test_a_deleted_event_is_found_at_its_position(store: Store) -> None:
    conversation_id = conversation_with_a_run(store.service)
    deleted = store.execute(
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?",
        (conversation_id, 3),
    )
    assert deleted == 1
    verification = store.auditor.verify(conversation_id)
    assert verification is not None and verification.broken is not None
    assert (verification.broken.position, verification.broken.problem) == (3, "missing_event")


def test_an_event_replaced_with_a_consistent_hash_breaks_the_link(store: Store) -> None:
    first = conversation_with_a_run(store.service)
    other = conversation_with_a_run(store.service)
    # Move another conversation's position-4 record (self-consistent, wrong chain) in.
    store.execute(
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?", (first, 4)
    )
    [record] = [r for r in store.service.recorder.select_events(other) if r.originator_version == 4]
    store.service.recorder.insert_events([StoredEvent(first, 4, record.topic, record.state)])
    verification = store.auditor.verify(first)
    assert verification is not None and verification.broken is not None
    assert verification.broken.position == 4
    assert verification.broken.problem in {"hash_mismatch", "broken_link"}


def test_an_event_written_with_an_older_schema_version_still_verifies(store: Store) -> None:
    """Verification uses the record as written, not its upcast form."""
    conversation_id = conversation_with_a_run(store.service)
    store.execute(
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?",
        (conversation_id, 5),
    )
    previous = store.service.mapper.to_domain_event(
        next(
            r
            for r in store.service.recorder.select_events(conversation_id)
            if r.originator_version == 4
        )
    )
    v1_data: dict[str, Any] = {
        "run_id": "run-1",
        "usage": {},
        "duration_ms": 1.5,
        "time_to_first_token_ms": None,
    }
    event_id = UUID(int=42)
    timestamp = RunCompleted.create_timestamp()
    document = chain_document(
        type_name="RunCompleted",
        event_id=event_id,
        conversation_id=conversation_id,
        position=5,
        timestamp=timestamp,
        cause=CAUSE,
        version=1,
        data=v1_data,
        prev_hash=previous.hash,  # type: ignore[attr-defined]
    )
    state = {
        "event_id": event_id,
        "timestamp": timestamp,
        "actor": CAUSE.actor,
        "correlation_id": CAUSE.correlation_id,
        "causation_id": None,
        "prev_hash": previous.hash,  # type: ignore[attr-defined]
        "hash": chain_hash(document),
        **v1_data,
    }
    encoded = store.service.mapper.transcoder.encode(state)
    store.service.recorder.insert_events(
        [StoredEvent(conversation_id, 5, get_topic(RunCompleted), encoded)]
    )
    loaded = store.service.mapper.to_domain_event(
        next(
            r
            for r in store.service.recorder.select_events(conversation_id)
            if r.originator_version == 5
        )
    )
    assert loaded.cost_usd is None  # type: ignore[attr-defined]  # upcast on read
    verification = store.auditor.verify(conversation_id)
    assert verification is not None and verification.intact


def test_verifying_everything_reports_each_conversation_and_locates_the_tampered_one(
    store: Store,
) -> None:
    ids = [conversation_with_a_run(store.service) for _ in range(3)]
    store.execute(
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?", (ids[1], 2)
    )
    progress: list[tuple[int, int]] = []
    results = {
        v.conversation_id: v for v in store.auditor.verify_all(lambda d, t: progress.append((d, t)))
    }
    assert set(results) == set(ids)
    assert [results[i].intact for i in ids] == [True, False, True]
    broken = results[ids[1]].broken
    assert broken is not None and (broken.position, broken.problem) == (2, "missing_event")
    assert progress[-1] == (14, 14)
