"""The global audit log, a conversation's events and its state at a position, through
real HTTP on SQLite and on PostgreSQL.

Histories are written through the domain by a second service on the same store (as
another process would); the auditor reads them back over HTTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from tests.e2e.conftest import SettingsFactory
from tests.histories import AGENT, USER, Run, ToolUse, ask
from tests.histories import start_conversation as start_owned
from tests.support import LiveServer, scripted_model
from threadlog.domain.application import ConversationService
from threadlog.domain.chain import chain_hash
from threadlog.domain.events import MessageCompleted, chain_document
from threadlog.domain.identity import user_id_for
from threadlog.infra.store.eventstore import open_service

LOG = "/v1/audit/events"
ALICE, BOB = str(user_id_for("alice")), str(user_id_for("bob"))


@dataclass
class Site:
    admin: httpx.Client
    auditor: httpx.Client
    alice: httpx.Client
    service: ConversationService


def key_of(admin: httpx.Client, username: str, roles: list[str]) -> str:
    user = admin.post("/v1/admin/users", json={"username": username, "roles": roles})
    assert user.status_code == 201, user.text
    issued = admin.post(f"/v1/admin/users/{user.json()['id']}/keys", json={})
    key: str = issued.json()["key"]
    return key


@contextmanager
def serving(make_settings: SettingsFactory) -> Iterator[Site]:
    settings = make_settings()
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as admin:
        auditor_key = key_of(admin, "auditor", ["auditor"])
        alice_key = key_of(admin, "alice", ["user"])
        service = open_service(settings)
        try:
            with server.client(key=auditor_key) as auditor, server.client(key=alice_key) as alice:
                yield Site(admin, auditor, alice, service)
        finally:
            service.close()


def canonical_hash(event: dict[str, Any]) -> str:
    """examples/verify_chain.py's check: what any client can recompute."""
    document = {k: v for k, v in event.items() if k not in ("hash", "global_position")}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_log(client: httpx.Client, limit: int = 3, **params: Any) -> list[dict[str, Any]]:
    """Every page, following `next` (pages may be short); `from_` stands for `from`."""
    if "from_" in params:
        params["from"] = params.pop("from_")
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        answer = client.get(LOG, params={**params, "after": after, "limit": limit})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        if page["next"] is None:
            return items
        assert page["next"] > after
        after = page["next"]


def histories(service: ConversationService) -> tuple[UUID, UUID]:
    """Alice talks to `helper` (a tool call), Bob to `writer`."""
    mine = start_owned(service, owner=ALICE, agent="helper")
    ask(service, mine, "add", Run(tools=[ToolUse(name="calc", result=2)], reply="2"))
    theirs = start_owned(service, owner=BOB, agent="writer")
    ask(service, theirs, "write", Run(reply="a poem"))
    ask(service, mine, "again", Run(reply="4"))
    return mine, theirs


def positions(items: list[dict[str, Any]]) -> list[int]:
    return [item["global_position"] for item in items]


def test_an_auditor_reads_every_event_in_global_order_each_as_written(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        mine, theirs = histories(site.service)
        items = read_log(site.auditor)
        total = site.service.recorder.max_notification_id()
    assert positions(items) == sorted(positions(items))
    assert len(set(positions(items))) == len(items) == total
    assert {item["conversation_id"] for item in items} == {str(mine), str(theirs)}
    assert all(canonical_hash(item) == item["hash"] for item in items)


def test_the_log_filters_by_conversation_user_agent_and_type(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        mine, theirs = histories(site.service)
        everything = read_log(site.auditor, limit=100)
        by_conversation = read_log(site.auditor, conversation_id=str(theirs))
        by_user = read_log(site.auditor, user=ALICE)
        by_agent = read_log(site.auditor, agent="writer")
        by_types = read_log(site.auditor, type=["MessagePosted", "RunCompleted,ToolCallStarted"])
        nobody = read_log(site.auditor, user=ALICE, agent="writer")
    theirs_events = [e for e in everything if e["conversation_id"] == str(theirs)]
    assert by_conversation == theirs_events == by_agent
    assert by_user == [e for e in everything if e["conversation_id"] == str(mine)]
    kinds = {"MessagePosted", "RunCompleted", "ToolCallStarted"}
    assert by_types == [e for e in everything if e["type"] in kinds]
    assert {e["type"] for e in by_types} == kinds
    assert nobody == []


def test_the_log_filters_by_a_time_range(make_settings: SettingsFactory) -> None:
    with serving(make_settings) as site:
        histories(site.service)
        everything = read_log(site.auditor, limit=100)
        middle = everything[len(everything) // 2]["timestamp"]
        until = read_log(site.auditor, to=middle)
        since = read_log(site.auditor, from_=middle)
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        later = read_log(site.auditor, from_=future)
    assert until and since and later == []
    assert all(e["timestamp"] < middle for e in until)
    assert all(e["timestamp"] >= middle for e in since)
    assert len(until) + len(since) == len(everything)


def test_an_event_written_under_an_older_schema_version_is_served_as_written(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        conversation_id = start_owned(site.service, owner=ALICE)
        started = site.service.get_conversation(conversation_id)
        v1_data = {"message_id": "m1", "run_id": "r1", "role": "assistant", "content": "old"}
        event_id, timestamp = UUID(int=7), MessageCompleted.create_timestamp()
        document = chain_document(
            type_name="MessageCompleted",
            event_id=event_id,
            conversation_id=conversation_id,
            position=2,
            timestamp=timestamp,
            cause=AGENT,
            version=1,
            data={**v1_data, "model_messages": "[]"},
            prev_hash=started.last_hash,
        )
        state = {
            "event_id": event_id,
            "timestamp": timestamp,
            "actor": AGENT.actor,
            "correlation_id": AGENT.correlation_id,
            "causation_id": None,
            "prev_hash": started.last_hash,
            "hash": chain_hash(document),
            **v1_data,
            "model_messages": "[]",
        }
        stored = StoredEvent(
            conversation_id,
            2,
            get_topic(MessageCompleted),
            site.service.mapper.transcoder.encode(state),
        )
        site.service.recorder.insert_events([stored])
        [_, old] = read_log(site.auditor, conversation_id=str(conversation_id))
        upcast = site.auditor.get(
            f"/v1/conversations/{conversation_id}/events", headers={"accept": "application/json"}
        ).json()["items"][1]
    assert old["schema_version"] == 1 and "output" not in old["data"]
    assert canonical_hash(old) == old["hash"]
    assert upcast["schema_version"] == 2 and canonical_hash(upcast) != upcast["hash"]


def test_a_user_gets_403_on_the_global_log_but_reads_their_own_conversations_events(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        mine = start_owned(site.service, owner=ALICE)
        ask(site.service, mine, "hi")
        forbidden = site.alice.get(LOG)
        own = site.alice.get(
            f"/v1/conversations/{mine}/events", headers={"accept": "application/json"}
        )
        admin = site.admin.get(LOG)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert admin.status_code == 403
    assert own.status_code == 200
    first = own.json()["items"][0]
    assert {"position", "global_position", "timestamp", "actor", "correlation_id"} <= set(first)
    assert "causation_id" in first and first["actor"] == USER.actor


def test_the_ndjson_export_streams_every_matching_event_and_ends(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        conversation_id = start_owned(site.service, owner=ALICE)
        for n in range(25):
            ask(site.service, conversation_id, f"question {n}", Run(reply="x" * 50))
        total = site.service.recorder.max_notification_id()
        lines: list[dict[str, Any]] = []
        with site.auditor.stream(
            "GET", LOG, params={"after": 3}, headers={"accept": "application/x-ndjson"}
        ) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in answer.iter_lines() if line]
        posted = site.auditor.get(
            LOG,
            params={"type": "MessagePosted"},
            headers={"accept": "application/x-ndjson"},
        ).text.splitlines()
    assert positions(lines) == list(range(4, (total or 0) + 1))
    assert all(canonical_hash(item) == item["hash"] for item in lines)
    assert len(posted) == 25


def test_bad_audit_log_parameters_get_a_400_naming_the_parameter(
    make_settings: SettingsFactory,
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"after": "x"}, "after"),
        ({"after": "-1"}, "after"),
        ({"type": "NoSuchEvent"}, "type"),
        ({"conversation_id": "not-a-uuid"}, "conversation_id"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-02-01"}, "from"),  # a date alone: the log takes date-times
        ({"owner": "x"}, "owner"),
    ]
    with serving(make_settings) as site:
        answers = [(site.auditor.get(LOG, params=params), name) for params, name in cases]
    for answer, name in answers:
        assert answer.status_code == 400, (name, answer.text)
        body = answer.json()
        assert name in body["message"] and name in str(body["details"]), body


def test_an_audit_window_whose_from_is_after_its_to_is_an_empty_page(
    make_settings: SettingsFactory,
) -> None:
    params = {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    with serving(make_settings) as site:
        start_owned(site.service, owner=ALICE)
        answer = site.auditor.get(LOG, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


def test_the_state_at_a_position_replays_the_conversation_up_to_it(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        conversation_id = start_owned(site.service, owner=ALICE)
        ask(site.service, conversation_id, "first", Run(reply="one"))
        site.service.rename(conversation_id, title="renamed", cause=USER)
        posted = site.service.post_message(
            conversation_id, content="second", client_message_id=None, model="m", cause=USER
        ).value
        live = site.service.get_conversation(conversation_id)
        for delta in ("Hel", "lo", " there"):
            live.stream_token(run_id=posted.run_id, part=0, delta=delta, cause=AGENT)
        site.service.save(live)
        path = f"/v1/conversations/{conversation_id}/state"
        at_start = site.alice.get(path, params={"at": 1}).json()
        # 1 started, 2 posted, 3 run started, 4 completed message, 5 run completed,
        # 6 renamed, 7 posted, 8 run started, 9-11 tokens.
        mid_run = site.auditor.get(path, params={"at": 10}).json()
        latest = site.alice.get(path).json()
    assert (at_start["title"], at_start["messages"], at_start["active_run"]) == (
        "scripted",
        [],
        None,
    )
    assert mid_run["position"] == 10 and mid_run["title"] == "renamed"
    assert [m["content"] for m in mid_run["messages"]] == ["first", "one", "second"]
    assert mid_run["active_run"]["run_id"] == posted.run_id
    assert mid_run["active_run"]["partial_text"] == "Hello"
    assert latest["position"] == latest["last_position"] == 11
    assert latest["active_run"]["partial_text"] == "Hello there"
    assert latest["last_hash"] == live.last_hash


def test_a_state_past_the_last_position_is_409_at_zero_400_and_others_get_404(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        theirs = start_owned(site.service, owner=BOB)
        path = f"/v1/conversations/{theirs}/state"
        past = site.auditor.get(path, params={"at": 2})
        zero = site.auditor.get(path, params={"at": 0})
        stranger = site.alice.get(path)
    assert past.status_code == 409 and past.json()["details"]["field"] == "at"
    assert past.json()["error"] == "position_not_reached"
    assert "last position, 1" in past.json()["message"]
    assert zero.status_code == 400 and "at" in zero.text
    assert stranger.status_code == 404
