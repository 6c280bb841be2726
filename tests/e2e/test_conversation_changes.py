"""Renaming, archiving and clearing a conversation: new events, never deletions."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic_ai.messages import ModelMessage

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    scripted_model,
    stored_events,
    wait_for_run_end,
)


def listed(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    page = client.get("/v1/conversations", params=params)
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def test_renaming_changes_the_title_in_the_conversation_and_the_list(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client, title="Draft")
        renamed = client.patch(f"/v1/conversations/{conversation_id}", json={"title": "Final"})
        assert renamed.status_code == 200 and renamed.json()["title"] == "Final"
        at = renamed.json()["global_position"]
        assert [c["title"] for c in listed(client, min_position=at)] == ["Final"]
        assert stored_events(client, conversation_id)[-1]["type"] == "ConversationRenamed"


def test_archiving_hides_the_conversation_and_refuses_messages_but_keeps_events(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client, title="Old")
        post_message(client, conversation_id, "hi")
        wait_for_run_end(client, conversation_id)
        path = f"/v1/conversations/{conversation_id}"
        archived = client.patch(path, json={"archived": True})
        assert archived.status_code == 200 and archived.json()["archived"] is True
        at = archived.json()["global_position"]
        assert listed(client, min_position=at) == []
        assert [c["id"] for c in listed(client, archived="true")] == [conversation_id]
        refused = client.post(
            f"/v1/conversations/{conversation_id}/messages", json={"content": "again"}
        )
        assert refused.status_code == 409 and refused.json()["error"] == "conversation_archived"
        types = [e["type"] for e in stored_events(client, conversation_id)]
        assert types[-1] == "ConversationArchived" and "MessageCompleted" in types
        assert client.get(path).json()["archived"] is True  # still there, flagged


def test_delete_is_not_an_operation_on_a_conversation(make_settings: SettingsFactory) -> None:
    # Archiving keeps the conversation readable, so it is PATCH {"archived": true}: a DELETE
    # that answered 2xx while the conversation stayed readable broke HTTP's DELETE.
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        path = f"/v1/conversations/{create_conversation(client)}"
        refused = client.delete(path)
        assert refused.status_code == 405
        assert set(refused.headers["allow"].split(", ")) == {"GET", "OPTIONS", "PATCH"}
        assert client.get(path).json()["archived"] is False


def test_clearing_restarts_the_history_and_the_agents_context(
    make_settings: SettingsFactory,
) -> None:
    seen: list[list[ModelMessage]] = []
    model = scripted_model(["reply"], seen=seen)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "remember the number 7")
        wait_for_run_end(client, conversation_id)
        cleared = client.post(f"/v1/conversations/{conversation_id}/clear")
        assert cleared.status_code == 200
        post_message(client, conversation_id, "what number?")
        events = wait_for_run_end(client, conversation_id)
        messages = client.get(
            f"/v1/conversations/{conversation_id}/messages",
            params={"min_position": events[-1]["global_position"]},
        ).json()["items"]
    assert [m["content"] for m in messages] == ["what number?", "reply"]
    assert "number 7" not in repr(seen[-1])
    assert "remember the number 7" in repr(events)  # every earlier event stays in the log


def test_an_empty_patch_is_400(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.patch(f"/v1/conversations/{conversation_id}", json={})
        unknown = client.patch(f"/v1/conversations/{conversation_id}", json={"colour": "red"})
    assert response.status_code == 400 and unknown.status_code == 400
    assert "colour" in unknown.json()["message"]
