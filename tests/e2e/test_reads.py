"""The read endpoints, through real HTTP, on SQLite and on PostgreSQL: conversation
lists and message histories built by the projections, read-your-writes included."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    scripted_model,
    wait_for_run_end,
)

REPLY = ["Hello", " from", " the", " agent"]


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def listed(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/conversations", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def messages(client: httpx.Client, conversation_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/v1/conversations/{conversation_id}/messages", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def assert_bad_parameter(response: httpx.Response, name: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert name in body["message"]
    assert body["details"] and name in str(body["details"])


def test_a_created_conversation_is_listed_at_once_when_asked_for_its_position(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        created = create(client, title="Fresh", agent="assistant")
        page = listed(client, min_position=created["global_position"])
        me = client.get("/v1/users/me").json()["id"]
    (item,) = page["items"]
    assert item == {
        "id": created["id"],
        "owner": me,
        "agent": "assistant",
        "title": "Fresh",
        "created_at": created["created_at"],
        "last_activity_at": created["created_at"],
        "message_count": 0,
        "run_status": "idle",
        "position": 1,
    }
    assert page["next"] is None


def test_a_title_with_a_nul_character_is_listed_with_a_replacement_character(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        created = create(client, title="nul \x00 here")
        renamed = client.patch(f"/v1/conversations/{created['id']}", json={"title": "re \x00"})
        assert renamed.status_code == 200, renamed.text
        page = listed(client, min_position=renamed.json()["global_position"])
    assert [item["title"] for item in page["items"]] == ["re \ufffd"]


def test_the_list_is_newest_activity_first_and_pages_with_an_opaque_cursor(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        ids = [create_conversation(client, title=f"chat {i}") for i in range(5)]
        post_message(client, ids[0], "bump the oldest")
        events = wait_for_run_end(client, ids[0])
        at = events[-1]["global_position"]
        pages = [listed(client, limit=2, min_position=at)]
        while pages[-1]["next"] is not None:
            pages.append(listed(client, limit=2, cursor=pages[-1]["next"]))
    seen = [item["id"] for page in pages for item in page["items"]]
    assert seen == [ids[0], ids[4], ids[3], ids[2], ids[1]]
    assert [len(page["items"]) for page in pages] == [2, 2, 1]
    first = pages[0]["items"][0]
    assert (first["message_count"], first["run_status"]) == (2, "idle")
    assert first["last_activity_at"] > first["created_at"]


def test_the_list_filters_by_agent_status_and_title(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        create(client, title="Weekly Report", agent="tools-demo")
        create(client, title="groceries", agent="assistant")
        talked = create_conversation(client, title="report ideas", agent="assistant")
        post_message(client, talked, "go")
        at = wait_for_run_end(client, talked)[-1]["global_position"]

        def titles(**params: Any) -> list[str]:
            return [i["title"] for i in listed(client, min_position=at, **params)["items"]]

        assert titles(agent="tools-demo") == ["Weekly Report"]
        assert titles(q="REPORT") == ["report ideas", "Weekly Report"]
        assert titles(q="report", agent="assistant") == ["report ideas"]
        assert titles(status="idle", agent="assistant") == ["report ideas", "groceries"]
        assert titles(status="running") == []
        assert titles(status="failed") == []


def test_bad_list_parameters_get_a_400_naming_the_parameter(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        cases: dict[str, dict[str, str | int]] = {
            "status": {"status": "sleeping"},
            "cursor": {"cursor": "not-a-cursor"},
            "limit": {"limit": 0},
            "min_position": {"min_position": -1},
            "owner": {"owner": "someone"},
        }
        for name, params in cases.items():
            assert_bad_parameter(client.get("/v1/conversations", params=params), name)
        conversation_id = create_conversation(client)
        assert_bad_parameter(
            client.get(f"/v1/conversations/{conversation_id}/messages", params={"cursor": "x"}),
            "cursor",
        )
        assert_bad_parameter(
            client.get(f"/v1/conversations/{conversation_id}/messages", params={"after": "x"}),
            "after",
        )


def test_a_posted_message_is_in_the_history_at_once_and_the_reply_after_the_run(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        accepted = post_message(client, conversation_id, "What do you say?")
        mine = messages(client, conversation_id, min_position=accepted["global_position"])
        at = wait_for_run_end(client, conversation_id)[-1]["global_position"]
        both = messages(client, conversation_id, min_position=at)
        first_page = messages(client, conversation_id, min_position=at, limit=1)
        second_page = messages(client, conversation_id, after=first_page["next"], limit=1)
    assert mine["items"][0]["content"] == "What do you say?"
    assert mine["items"][0]["message_id"] == accepted["message_id"]
    user, agent = both["items"]
    assert (user["role"], user["position"], user["run_id"]) == (
        "user",
        accepted["position"],
        accepted["run_id"],
    )
    assert (agent["role"], agent["content"], agent["run_id"]) == (
        "assistant",
        "".join(REPLY),
        accepted["run_id"],
    )
    assert both["next"] is None
    assert first_page["items"] == [user] and first_page["next"] == user["position"]
    assert second_page["items"] == [agent] and second_page["next"] is None


def test_newest_first_pages_walk_back_from_the_newest_message(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        for text in ("one", "two", "three"):
            post_message(client, conversation_id, text)
            at = wait_for_run_end(client, conversation_id)[-1]["global_position"]
        everything = messages(client, conversation_id, min_position=at)["items"]
        pages, before = [], None
        while True:
            params: dict[str, Any] = {"order": "desc", "limit": 4}
            if before is not None:
                params["before"] = before
            page = messages(client, conversation_id, **params)
            pages.append(page["items"])
            if page["next"] is None:
                break
            before = page["next"]
        bad = client.get(f"/v1/conversations/{conversation_id}/messages", params={"order": "up"})
    positions = [m["position"] for m in everything]
    assert [len(p) for p in pages] == [4, 2]
    assert [m["position"] for p in pages for m in p] == positions[::-1]
    assert pages[0][0]["content"] == "".join(REPLY) and pages[1][-1]["content"] == "one"
    assert_bad_parameter(bad, "order")


def test_the_history_of_an_unknown_conversation_is_404(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(REPLY)) as server, server.client() as client:
        response = client.get("/v1/conversations/00000000-0000-4000-8000-000000000000/messages")
    assert response.status_code == 404
    assert response.json()["error"] == "conversation_not_found"


def test_a_read_model_that_cannot_reach_min_position_in_time_answers_503_with_retry_after(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(projections=False, read_wait_seconds=0.3)
    with LiveServer(settings, scripted_model(REPLY)) as server, server.client() as client:
        created = create(client, title="nobody projects me")
        behind = client.get(
            "/v1/conversations", params={"min_position": created["global_position"]}
        )
        anyway = listed(client)
    assert behind.status_code == 503
    assert behind.headers["retry-after"] == "1"
    assert behind.json()["error"] == "read_model_behind"
    assert behind.json()["details"]["read_model"] == "conversation_list"
    assert anyway["items"] == []
