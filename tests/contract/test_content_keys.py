"""Content keys and sealing: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import BACKENDS, database_url_for
from threadlog.domain.events import Cause, verify_event_hash
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import (
    KEY,
    SEALED,
    ContentKeys,
    Opened,
    is_sealed,
    open_content_keys,
)
from threadlog.infra.store.eventstore import EventLog, open_service

CONTENT = {"text": "héllo 🦜 \x00", "n": [1, 2.5, None]}


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url_for(request, request.param))


@pytest.fixture
def keys(settings: Settings) -> Iterator[ContentKeys]:
    opened = open_content_keys(settings)
    yield opened
    opened.close()


def test_a_sealed_value_opens_to_the_same_value(keys: ContentKeys) -> None:
    sealed = keys.seal_for("alice")(CONTENT)
    assert is_sealed(sealed) and "héllo" not in str(sealed)
    assert keys.open(sealed) == Opened(CONTENT)


def test_plaintext_and_none_are_left_as_they_are(keys: ContentKeys) -> None:
    assert keys.seal_for("alice")(None) is None
    assert keys.open("written before sealing") == Opened("written before sealing")


def test_each_owner_has_one_key_until_it_is_erased(keys: ContentKeys) -> None:
    alice, bob = keys.seal_for("alice"), keys.seal_for("bob")
    assert alice("a")[KEY] == alice("b")[KEY] != bob("c")[KEY]


def test_erasing_an_owner_makes_only_their_content_unreadable(keys: ContentKeys) -> None:
    alices, bobs = keys.seal_for("alice")("mine"), keys.seal_for("bob")("his")
    assert keys.erase("alice") == 1
    assert keys.open(alices) == Opened(None, erased=True)
    assert keys.open(bobs) == Opened("his")
    assert keys.erase("alice") == 0  # nothing left to erase


def test_an_erasure_reaches_another_process_that_forgets_its_cached_keys(
    settings: Settings,
) -> None:
    writer, other = open_content_keys(settings), open_content_keys(settings)
    try:
        sealed = writer.seal_for("alice")("mine")
        assert other.open(sealed) == Opened("mine")  # cached by the other process now
        writer.erase("alice")
        other.forget("alice")  # what the NATS notice does (infra/runtime.py)
        assert other.open(sealed) == Opened(None, erased=True)
    finally:
        writer.close()
        other.close()


def test_content_sealed_after_an_erasure_gets_a_new_readable_key(keys: ContentKeys) -> None:
    before = keys.seal_for("alice")("old")
    keys.erase("alice")
    after = keys.seal_for("alice")("new")
    assert after[KEY] != before[KEY]
    assert keys.open(after) == Opened("new")


def test_a_tampered_ciphertext_does_not_open(keys: ContentKeys) -> None:
    sealed: dict[str, Any] = keys.seal_for("alice")("mine")
    box = bytearray(base64.b64decode(sealed[SEALED]))
    box[-1] ^= 1
    tampered = {**sealed, SEALED: base64.b64encode(bytes(box)).decode()}
    assert keys.open(tampered) == Opened(None, erased=True)


def test_a_posted_message_is_stored_sealed_and_its_event_hash_covers_the_sealed_value(
    settings: Settings, keys: ContentKeys
) -> None:
    service = open_service(settings, keys)
    try:
        cause = Cause(actor="user:alice", correlation_id="req-1")
        started = service.start_conversation(
            owner="alice", agent="assistant", title="t", metadata={}, cause=cause
        ).value
        service.post_message(
            started.id, content="a secret", client_message_id=None, model="m", cause=cause
        )
        posted = EventLog(service).read(started.id)[1].event
    finally:
        service.close()
    content = getattr(posted, "content")  # noqa: B009
    assert is_sealed(content)
    assert keys.open(content) == Opened("a secret")
    assert verify_event_hash(posted)
