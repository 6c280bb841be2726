"""Erasure: a user's content is sealed with their keys; destroying the keys erases it
everywhere, while every event stays and every hash chain still verifies."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic_ai.messages import ModelMessage

from tests.e2e.conftest import SettingsFactory
from tests.e2e.test_stream_contract import names_of, read_stream, stream_state, wait_for_relay
from tests.servers import NatsNames
from tests.support import (
    LiveServer,
    create_conversation,
    new_user,
    post_message,
    read_sse,
    scripted_model,
    stored_events,
    wait_for_run_end,
)
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service

SECRET = "my-secret-diagnosis"
REPLY = ["the ", "secret ", "reply"]
VERIFY_SCRIPT = Path(__file__).parents[2] / "examples" / "verify_chain.py"


def converse(owner: httpx.Client, prompt: str = f"I have {SECRET}") -> str:
    conversation_id = create_conversation(owner, title="a visible title")
    post_message(owner, conversation_id, prompt)
    wait_for_run_end(owner, conversation_id)
    return conversation_id


def user_id_of(client: httpx.Client) -> str:
    me: dict[str, Any] = client.get("/v1/users/me").json()
    return str(me["id"])


def erase(admin: httpx.Client, user_id: str) -> httpx.Response:
    return admin.delete(f"/v1/users/{user_id}/content")


def stored_states(settings: Settings) -> bytes:
    """Every stored event's bytes, as someone reading the database would see them."""
    service = open_service(settings)
    try:
        notifications = service.recorder.select_notifications(start=1, limit=1_000_000)
        return b"".join(n.state for n in notifications)
    finally:
        service.close()


def by_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == name]


def test_content_is_stored_and_published_sealed_never_as_plaintext(
    make_settings: SettingsFactory, nats_url: str, nats_names: NatsNames
) -> None:
    settings, names = make_settings(), names_of(nats_names)
    with LiveServer(settings, model=scripted_model(REPLY)) as server, server.client() as admin:
        owner = new_user(server, admin, f"ann-{uuid.uuid4().hex[:8]}", ["user"])
        conversation_id = converse(owner)
        events = stored_events(owner, conversation_id)
        wait_for_relay(nats_url, names, events[-1]["global_position"])
        published = read_stream(nats_url, names, start=1, count=stream_state(nats_url, names)[0])
    # The owner reads it …
    assert by_type(events, "MessagePosted")[0]["data"]["content"] == f"I have {SECRET}"
    deltas = [e["data"]["delta"] for e in by_type(events, "TokenStreamed")]
    assert "".join(deltas) == "the secret reply"
    # … the store and JetStream hold it sealed.
    raw = stored_states(settings)
    assert SECRET.encode() not in raw and b"secret reply" not in raw
    payloads = [str(item.payload) for item in published]
    assert payloads and not any(SECRET in p or "secret reply" in p for p in payloads)
    posted = next(i.payload for i in published if i.payload["type"] == "MessagePosted")
    assert set(posted["data"]["content"]) == {"$sealed", "$key"}


def test_erasing_a_users_content_makes_it_unreadable_in_every_read(
    make_settings: SettingsFactory,
) -> None:
    with (
        LiveServer(make_settings(), model=scripted_model(REPLY)) as server,
        server.client() as admin,
    ):
        owner = new_user(server, admin, f"bob-{uuid.uuid4().hex[:8]}", ["user"])
        conversation_id = converse(owner)
        before = stored_events(owner, conversation_id)
        answer = erase(admin, user_id_of(owner))
        assert answer.status_code == 200, answer.text
        assert answer.json()["keys_erased"] == 1
        events = stored_events(owner, conversation_id)
        replayed = read_sse(owner, f"/v1/conversations/{conversation_id}/events")
        # Read models trail the store (by up to THREADLOG_FOLLOW_INTERVAL_MS): read at
        # least at the last event, as a client that just wrote would.
        at_least = {"min_position": before[-1]["global_position"]}
        messages = owner.get(
            f"/v1/conversations/{conversation_id}/messages", params=at_least
        ).json()["items"]
        state = owner.get(f"/v1/conversations/{conversation_id}/state").json()
        run = owner.get(f"/v1/runs/{before[-1]['data']['run_id']}/result").json()
        listed = owner.get("/v1/conversations", params=at_least).json()["items"]
    # Every event stays, with its ids, positions, types and hashes.
    assert [(e["id"], e["type"], e["hash"]) for e in events] == [
        (e["id"], e["type"], e["hash"]) for e in before
    ]
    posted = by_type(events, "MessagePosted")[0]
    assert posted["data"]["content"] is None and posted["erased"] == ["content"]
    assert all(e["data"]["delta"] is None for e in by_type(events, "TokenStreamed"))
    completed = by_type(events, "MessageCompleted")[0]
    assert completed["data"]["content"] is None and completed["data"]["model_messages"] is None
    assert [e.data for e in replayed] == events  # SSE serves the same
    assert [(m["content"], m["erased"]) for m in messages] == [(None, True), (None, True)]
    assert [m["content"] for m in state["messages"]] == [None, None]
    assert run["content"] is None
    assert listed[0]["title"] == "a visible title"  # titles are not content (docs/erasure.md)


def test_a_replay_after_an_erasure_shows_it_erased_though_an_earlier_replay_kept_its_frames(
    make_settings: SettingsFactory,
) -> None:
    with (
        LiveServer(make_settings(), model=scripted_model(REPLY)) as server,
        server.client() as admin,
    ):
        owner = new_user(server, admin, f"ann-{uuid.uuid4().hex[:8]}", ["user"])
        conversation_id = converse(owner)
        path = f"/v1/conversations/{conversation_id}/events"
        opened = read_sse(owner, path)  # the server keeps these frames, content opened
        assert erase(admin, user_id_of(owner)).status_code == 200
        replayed = read_sse(owner, path)
    assert by_type([e.data for e in opened], "MessagePosted")[0]["data"]["content"] is not None
    posted = by_type([e.data for e in replayed], "MessagePosted")[0]
    assert posted["data"]["content"] is None and posted["erased"] == ["content"]
    assert [e.data["hash"] for e in replayed] == [e.data["hash"] for e in opened]


def test_the_chain_still_verifies_after_an_erasure(make_settings: SettingsFactory) -> None:
    with (
        LiveServer(make_settings(), model=scripted_model(REPLY)) as server,
        server.client() as admin,
    ):
        owner = new_user(server, admin, f"cy-{uuid.uuid4().hex[:8]}", ["user"])
        auditor = new_user(server, admin, f"au-{uuid.uuid4().hex[:8]}", ["auditor"])
        conversation_id = converse(owner)
        assert erase(admin, user_id_of(owner)).status_code == 200
        verified = auditor.get(f"/v1/audit/conversations/{conversation_id}/verify").json()
        script = subprocess.run(
            [sys.executable, str(VERIFY_SCRIPT), server.base_url, conversation_id],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"THREADLOG_API_KEY": auditor.headers["X-API-Key"]},
        )
    assert verified["intact"] is True and verified["first_broken"] is None
    assert script.returncode == 0, script.stdout + script.stderr
    assert "intact up to position" in script.stdout


def test_new_messages_after_an_erasure_are_readable_and_the_agent_forgets_the_erased_ones(
    make_settings: SettingsFactory,
) -> None:
    seen: list[list[ModelMessage]] = []
    with (
        LiveServer(make_settings(), model=scripted_model(REPLY, seen=seen)) as server,
        server.client() as admin,
    ):
        owner = new_user(server, admin, f"di-{uuid.uuid4().hex[:8]}", ["user"])
        conversation_id = converse(owner)
        assert erase(admin, user_id_of(owner)).status_code == 200
        post_message(owner, conversation_id, "a new question")
        events = wait_for_run_end(owner, conversation_id)
    posted = by_type(events, "MessagePosted")
    assert [p["data"]["content"] for p in posted] == [None, "a new question"]
    assert events[-1]["type"] == "RunCompleted"
    # The second run's model saw the new question, and nothing of the erased exchange.
    assert SECRET not in str(seen[-1]) and "secret reply" not in str(seen[-1])
    assert "a new question" in str(seen[-1])


def test_erasure_is_for_admins_and_an_unknown_user_is_404(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings()) as server, server.client() as admin:
        owner = new_user(server, admin, f"ed-{uuid.uuid4().hex[:8]}", ["user", "auditor"])
        refused = erase(owner, user_id_of(owner))
        unknown = erase(admin, str(uuid.uuid4()))
        malformed = admin.delete("/v1/users/not-a-uuid/content")
        nothing_yet = erase(admin, user_id_of(owner))
    assert refused.status_code == 403, refused.text
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]
    assert malformed.status_code in (400, 404)
    assert nothing_yet.status_code == 200 and nothing_yet.json()["keys_erased"] == 0
