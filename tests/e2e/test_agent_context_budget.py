"""An agent's context budget is part of its versions: set through the API, shown as the
budget in effect, and followed by compaction from the version a run is pinned to."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import SettingsFactory
from tests.support import LiveServer, create_conversation, post_message, wait_for_run_end

SERVER_BUDGET = 50_000
SMALL = 250


def create_agent(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/agents", json={"name": "brief", "model": "demo", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def run(client: httpx.Client, conversation_id: str, content: str) -> list[dict[str, Any]]:
    """One message and its run (which must complete); the events of that run only."""
    accepted = post_message(client, conversation_id, content)
    events = wait_for_run_end(client, conversation_id)
    assert events[-1]["type"] == "RunCompleted", events[-1]
    return [e for e in events if e["data"].get("run_id") == accepted["run_id"]]


def of_type(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == name]


def test_an_agent_with_a_small_budget_compacts_its_long_conversation(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(context_budget=SERVER_BUDGET, compaction_summary_tokens=60)
    with LiveServer(settings) as server, server.client() as client:
        agent = create_agent(client, context_budget=SMALL)
        conversation_id = create_conversation(client, agent=agent["id"])
        runs = [run(client, conversation_id, f"message {i}: event logs") for i in range(5)]
        listed = client.get("/v1/agents", params={"q": "brief"}).json()["items"]
        # The built-in agents have none of their own: the server's budget is theirs.
        assistant = client.get("/v1/agents", params={"owner": "system"}).json()["items"]
    assert agent["context_budget"] == SMALL and agent["version"] == 1
    assert [item["context_budget"] for item in listed if item["id"] == agent["id"]] == [SMALL]
    assert {item["context_budget"] for item in assistant} == {SERVER_BUDGET}
    compactions = [c for events in runs for c in of_type(events, "HistoryCompacted")]
    assert compactions, "a conversation past its agent's budget is compacted"
    for compaction in compactions:
        assert compaction["data"]["tokens_before"] > SMALL >= compaction["data"]["tokens_after"]
    for events in runs:
        (started,) = of_type(events, "RunStarted")
        assert (started["data"]["agent_id"], started["data"]["agent_version"]) == (agent["id"], 1)


def test_a_revision_of_the_budget_applies_from_the_next_run(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(context_budget=SERVER_BUDGET, compaction_summary_tokens=60)
    with LiveServer(settings) as server, server.client() as client:
        agent = create_agent(client, context_budget=0)  # never compacts
        path = f"/v1/agents/{agent['id']}"
        conversation_id = create_conversation(client, agent=agent["id"])
        before = [run(client, conversation_id, f"message {i}: event logs") for i in range(5)]
        revised = client.patch(path, json={"context_budget": SMALL})
        after = run(client, conversation_id, "message 5: event logs")
        reset = client.patch(path, json={"context_budget": None})
        unbounded = run(client, conversation_id, "message 6: event logs")
        versions = client.get(f"{path}/versions").json()["items"]
        first = client.get(path, params={"version": 1}).json()
    assert all(of_type(events, "HistoryCompacted") == [] for events in before)
    assert revised.status_code == 200, revised.text
    assert (revised.json()["version"], revised.json()["context_budget"]) == (2, SMALL)
    (compaction,) = of_type(after, "HistoryCompacted")
    assert compaction["data"]["tokens_before"] > SMALL >= compaction["data"]["tokens_after"]
    assert of_type(after, "RunStarted")[0]["data"]["agent_version"] == 2
    # null: the server's budget again (version 3), under which the history fits.
    assert (reset.json()["version"], reset.json()["context_budget"]) == (3, SERVER_BUDGET)
    assert of_type(unbounded, "HistoryCompacted") == []
    assert of_type(unbounded, "RunStarted")[0]["data"]["agent_version"] == 3
    assert [(v["version"], v["context_budget"]) for v in versions] == [
        (1, 0),
        (2, SMALL),
        (3, SERVER_BUDGET),
    ]
    assert first["context_budget"] == 0


def test_a_bad_budget_is_a_400_naming_the_field(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings()) as server, server.client() as client:
        agent = create_agent(client)
        responses = [
            response
            for budget in (-1, "many", True, 1.5, 10**12)
            for response in (
                client.post("/v1/agents", json={"name": "x", "context_budget": budget}),
                client.patch(f"/v1/agents/{agent['id']}", json={"context_budget": budget}),
            )
        ]
        unchanged = client.get(f"/v1/agents/{agent['id']}").json()
    for response in responses:
        assert response.status_code == 400, response.text
        assert "context_budget" in response.text
    assert unchanged["version"] == 1
