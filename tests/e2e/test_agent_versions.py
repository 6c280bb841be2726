"""Agents as versioned events through real HTTP: create, revise, publish, copy, retire,
try; pinning a run to the version it used; the marketplace; who may see and change what."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.backends import BACKENDS
from tests.e2e.conftest import SettingsFactory
from tests.servers import NatsNames, delete_stream
from tests.support import (
    LiveServer,
    create_conversation,
    new_user,
    parse_sse,
    post_message,
    settings_for,
    unique,
    wait_for_run_end,
)


def instructions_model(seen: list[str | None], delay: float = 0.0) -> FunctionModel:
    """Answers `ok`, recording the instructions (system prompt) each request carried."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        last = messages[-1]
        seen.append(last.instructions if isinstance(last, ModelRequest) else None)
        for token in ("o", "k"):
            if delay:
                import asyncio

                await asyncio.sleep(delay)
            yield token

    return FunctionModel(stream_function=stream, model_name="instructed")


class Site:
    def __init__(self, server: LiveServer, seen: list[str | None]) -> None:
        self.server = server
        self.seen = seen
        self.admin = server.client()

    def user(self, name: str = "user") -> httpx.Client:
        return new_user(self.server, self.admin, unique(name), ["user"])


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> Iterator[Site]:
    database_url = (
        request.getfixturevalue("session_database_url") if request.param == "postgres" else None
    )
    names = NatsNames.new()
    settings = settings_for(
        Path(tmp_path_factory.mktemp("agents")),
        database_url=database_url,
        nats_url=nats_url,
        names=names,
    )
    seen: list[str | None] = []
    with LiveServer(settings, instructions_model(seen, delay=0.02)) as server:
        site = Site(server, seen)
        yield site
        site.admin.close()
    delete_stream(nats_url, names.stream)


def create_agent(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "helper")
    response = client.post("/v1/agents", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def run_once(client: httpx.Client, agent: str, content: str = "hi") -> list[dict[str, Any]]:
    conversation_id = create_conversation(client, agent=agent)
    post_message(client, conversation_id, content)
    return wait_for_run_end(client, conversation_id)


def run_started(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event["data"] for event in events if event["type"] == "RunStarted"]


# --- the aggregate through the API ---------------------------------------------------------


def test_a_new_agent_is_private_at_version_1_and_owned_by_its_creator(site: Site) -> None:
    with site.user() as alice:
        me = alice.get("/v1/users/me").json()
        agent = create_agent(
            alice,
            name="summarizer",
            description="Summarizes",
            category="writing",
            model="test",
            system_prompt="Summarize.",
            tools=["calculator"],
            output_schema={"type": "object", "properties": {"summary": {"type": "string"}}},
            model_settings={"temperature": 0.2},
            price={"input_per_million": 1.0, "output_per_million": 2.0},
        )
        read = alice.get(f"/v1/agents/{agent['id']}")
    assert read.status_code == 200, read.text
    body = read.json()
    assert body["owner"] == me["id"] and not body["public"] and not body["system"]
    assert body["version"] == 1 and body["latest_version"] == 1
    assert body["category"] == "writing" and body["tools"] == ["calculator"]
    assert body["output_type"] == "structured"
    assert body["model_settings"] == {"temperature": 0.2}
    assert body["reference"] == agent["id"]


def test_a_revision_is_a_new_version_and_every_version_is_kept(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice, system_prompt="one", category="a")
        revised = alice.patch(f"/v1/agents/{agent['id']}", json={"system_prompt": "two"})
        first = alice.get(f"/v1/agents/{agent['id']}", params={"version": 1})
        missing = alice.get(f"/v1/agents/{agent['id']}", params={"version": 3})
        versions = alice.get(f"/v1/agents/{agent['id']}/versions")
    assert revised.status_code == 200, revised.text
    assert revised.json()["version"] == 2 and revised.json()["category"] == "a"
    assert first.json()["system_prompt"] == "one" and first.json()["latest_version"] == 2
    assert missing.status_code == 404
    assert [(v["version"], v["system_prompt"]) for v in versions.json()["items"]] == [
        (1, "one"),
        (2, "two"),
    ]


def test_an_unchanged_revision_records_no_new_version(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice, system_prompt="same")
        again = alice.patch(f"/v1/agents/{agent['id']}", json={"system_prompt": "same"})
        versions = alice.get(f"/v1/agents/{agent['id']}/versions").json()["items"]
    assert again.status_code == 200 and again.json()["version"] == 1
    assert len(versions) == 1


def test_null_resets_the_output_schema_to_text(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice, output_schema={"type": "object"})
        revised = alice.patch(f"/v1/agents/{agent['id']}", json={"output_schema": None})
    assert revised.json()["output_type"] == "text" and revised.json()["output_schema"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "tools": ["rm_rf"]}, "tools"),
        ({"name": "x", "output_schema": {"type": "array"}}, "output_schema"),
        ({"name": "x", "model": "nosuchprovider:model"}, "model"),
        ({"name": "x", "model_settings": {"frobnicate": 1}}, "model_settings"),
        ({"name": "x", "price": {"input_per_million": -1, "output_per_million": 0}}, "price"),
        ({"name": " spaced"}, "name"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(site: Site, body: dict[str, Any], field: str) -> None:
    response = site.admin.post("/v1/agents", json=body)
    assert response.status_code == 400, response.text
    assert field in response.text


def test_a_revision_with_bad_input_is_a_400_naming_the_field(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice)
        response = alice.patch(f"/v1/agents/{agent['id']}", json={"model": "bogus:x"})
    assert response.status_code == 400 and "model" in response.text


# --- visibility and ownership ----------------------------------------------------------------


def test_another_users_private_agent_is_404_on_every_route(site: Site) -> None:
    with site.user("owner") as owner, site.user("stranger") as stranger:
        agent = create_agent(owner)
        base = f"/v1/agents/{agent['id']}"
        answers = [
            stranger.get(base),
            stranger.get(f"{base}/versions"),
            stranger.patch(base, json={"description": "mine now"}),
            stranger.post(f"{base}/publish"),
            stranger.post(f"{base}/unpublish"),
            stranger.delete(base),
            stranger.post(f"{base}/copy"),
            stranger.post(f"{base}/try", json={"content": "hi"}),
        ]
        conversation = stranger.post("/v1/conversations", json={"agent": agent["id"]})
        listed = [a["id"] for a in stranger.get("/v1/agents").json()["items"]]
    assert [a.status_code for a in answers] == [404] * len(answers)
    assert conversation.status_code == 400 and "unknown_agent" in conversation.text
    assert agent["id"] not in listed


def test_admins_see_and_change_every_agent(site: Site) -> None:
    with site.user() as owner:
        agent = create_agent(owner)
    read = site.admin.get(f"/v1/agents/{agent['id']}")
    listed = site.admin.get("/v1/agents", params={"owner": agent["owner"]}).json()["items"]
    revised = site.admin.patch(f"/v1/agents/{agent['id']}", json={"category": "moderated"})
    assert read.status_code == 200 and [a["id"] for a in listed] == [agent["id"]]
    assert revised.status_code == 200 and revised.json()["version"] == 2


def test_a_published_agent_is_seen_by_everyone_but_changed_only_by_its_owner(site: Site) -> None:
    with site.user("owner") as owner, site.user("stranger") as stranger:
        agent = create_agent(owner, category="public-test")
        published = owner.post(f"/v1/agents/{agent['id']}/publish")
        read = stranger.get(f"/v1/agents/{agent['id']}")
        changed = stranger.patch(f"/v1/agents/{agent['id']}", json={"description": "x"})
        retired = stranger.delete(f"/v1/agents/{agent['id']}")
        unpublished = owner.post(f"/v1/agents/{agent['id']}/unpublish")
        hidden = stranger.get(f"/v1/agents/{agent['id']}")
    assert published.status_code == 200 and published.json()["public"] is True
    assert read.status_code == 200
    assert changed.status_code == 403 and retired.status_code == 403
    assert unpublished.json()["public"] is False and hidden.status_code == 404


def test_a_copy_is_mine_private_and_remembers_where_it_came_from(site: Site) -> None:
    with site.user("owner") as owner, site.user("copier") as copier:
        agent = create_agent(owner, system_prompt="v1")
        owner.patch(f"/v1/agents/{agent['id']}", json={"system_prompt": "v2"})
        owner.post(f"/v1/agents/{agent['id']}/publish")
        me = copier.get("/v1/users/me").json()
        copied = copier.post(f"/v1/agents/{agent['id']}/copy", params={"version": 1})
        runs = run_once(copier, copied.json()["id"])
    assert copied.status_code == 201, copied.text
    body = copied.json()
    assert body["owner"] == me["id"] and body["public"] is False and body["version"] == 1
    assert body["system_prompt"] == "v1"
    assert body["copied_from"] == {"agent_id": agent["id"], "version": 1}
    assert runs[-1]["type"] == "RunCompleted"


def test_the_list_holds_mine_and_the_published_filtered_and_paged(site: Site) -> None:
    category = unique("cat")
    with site.user("lister") as alice, site.user("other") as bob:
        mine = [create_agent(alice, name=f"a{i}", category=category) for i in range(3)]
        theirs = create_agent(bob, name="b-public", category=category, description="Needle")
        bob.post(f"/v1/agents/{theirs['id']}/publish")
        create_agent(bob, name="b-private", category=category)
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"category": category, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = alice.get("/v1/agents", params=params).json()
            pages.append([a["name"] for a in page["items"]])
            cursor = page["next"]
            if cursor is None:
                break
        found = alice.get("/v1/agents", params={"category": category, "q": "needle"}).json()
        owned = alice.get("/v1/agents", params={"owner": mine[0]["owner"]}).json()
        system = alice.get("/v1/agents", params={"owner": "system"}).json()
    assert pages == [["a0", "a1"], ["a2", "b-public"]]
    assert [a["name"] for a in found["items"]] == ["b-public"]
    assert {a["id"] for a in owned["items"]} == {a["id"] for a in mine}
    assert {a["name"] for a in system["items"]} >= {"assistant", "tools-demo"}


# --- running agents, pinning ----------------------------------------------------------------


def test_an_agent_created_through_the_api_runs_in_a_conversation(site: Site) -> None:
    prompt = unique("You are agent")
    with site.user() as alice:
        agent = create_agent(alice, system_prompt=prompt)
        events = run_once(alice, agent["id"])
    started = run_started(events)
    assert events[-1]["type"] == "RunCompleted"
    assert started[0]["agent"] == agent["id"]
    assert started[0]["agent_id"] == agent["id"] and started[0]["agent_version"] == 1
    assert prompt in site.seen


def test_the_openapi_document_lets_a_conversation_name_an_agent_by_its_id(site: Site) -> None:
    document = site.admin.get("/schema/openapi.json").json()
    body = document["components"]["schemas"]["CreateConversation"]["properties"]["agent"]
    [query] = [
        p for p in document["paths"]["/v1/ag-ui"]["post"]["parameters"] if p["name"] == "agent"
    ]
    for schema in (body, query["schema"]):
        options = [o for option in schema.get("oneOf", [schema]) for o in option.get("anyOf", [])]
        names = [o for o in options if "enum" in o]
        ids = [o for o in options if o.get("format") == "uuid"]
        assert len(names) == 1 and {"assistant", "tools-demo"} <= set(names[0]["enum"]), schema
        assert len(ids) == 1, schema


def test_a_revision_applies_from_the_next_run_never_to_a_running_one(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice, system_prompt=unique("first"))
        conversation_id = create_conversation(alice, agent=agent["id"])
        post_message(alice, conversation_id, "one")
        revised = alice.patch(f"/v1/agents/{agent['id']}", json={"system_prompt": unique("second")})
        wait_for_run_end(alice, conversation_id)
        post_message(alice, conversation_id, "two")
        events = wait_for_run_end(alice, conversation_id)
        runs = alice.get("/v1/runs", params={"conversation_id": conversation_id}).json()
        stats = alice.get(f"/v1/conversations/{conversation_id}/stats").json()
    assert [s["agent_version"] for s in run_started(events)] == [1, 2]
    assert agent["system_prompt"] in site.seen and revised.json()["system_prompt"] in site.seen
    assert site.seen.index(agent["system_prompt"]) < site.seen.index(
        revised.json()["system_prompt"]
    )
    assert sorted(run["agent_version"] for run in runs["items"]) == [1, 2]
    assert all(run["agent_id"] == agent["id"] for run in runs["items"])
    assert stats["runs_by_agent_version"] == {f"{agent['id']}@1": 1, f"{agent['id']}@2": 1}


def test_a_retired_agent_takes_no_new_conversation_but_existing_ones_keep_working(
    site: Site,
) -> None:
    with site.user() as alice:
        agent = create_agent(alice)
        conversation_id = create_conversation(alice, agent=agent["id"])
        retired = alice.delete(f"/v1/agents/{agent['id']}")
        refused = alice.post("/v1/conversations", json={"agent": agent["id"]})
        tried = alice.post(f"/v1/agents/{agent['id']}/try", json={"content": "hi"})
        gone = [
            alice.get(f"/v1/agents/{agent['id']}"),
            alice.get(f"/v1/agents/{agent['id']}/versions"),
            alice.patch(f"/v1/agents/{agent['id']}", json={"description": "x"}),
        ]
        post_message(alice, conversation_id, "still there?")
        events = wait_for_run_end(alice, conversation_id)
        listed = [a["id"] for a in alice.get("/v1/agents").json()["items"]]
    assert retired.status_code == 200 and retired.json()["retired"] is True
    assert refused.status_code == 409 and "agent_retired" in refused.text
    assert tried.status_code == 409
    assert [answer.status_code for answer in gone] == [410, 410, 410]
    assert events[-1]["type"] == "RunCompleted"
    assert agent["id"] not in listed


def test_try_answers_with_the_reply_and_keeps_the_trial_out_of_the_list(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice)
        tried = alice.post(f"/v1/agents/{agent['id']}/try", json={"content": "hello"})
        conversation_id = tried.json()["conversation_id"]
        events = wait_for_run_end(alice, conversation_id)
        listed = alice.get("/v1/conversations").json()["items"]
        run = alice.get(f"/v1/runs/{tried.json()['run_id']}")
    assert tried.status_code == 200, tried.text
    assert tried.json()["status"] == "completed" and tried.json()["reply"] == "ok"
    assert events[0]["data"]["metadata"] == {"threadlog.trial": True}
    assert run_started(events)[0]["agent_id"] == agent["id"]
    assert conversation_id not in [c["id"] for c in listed]
    assert run.status_code == 200


def test_try_streams_the_run_as_server_sent_events(site: Site) -> None:
    with site.user() as alice:
        agent = create_agent(alice)
        with alice.stream(
            "POST",
            f"/v1/agents/{agent['id']}/try",
            json={"content": "hello"},
            headers={"accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            kinds = [event.event for event in parse_sse(response.iter_lines())]
    assert kinds[0] == "MessagePosted" and kinds[-1] == "RunCompleted"
    assert "TokenStreamed" in kinds


def test_a_body_is_read_as_strictly_as_the_schema_says(site: Site) -> None:
    lenient = site.admin.post(
        "/v1/agents", json={"name": "x", "model_settings": {"max_tokens": "5"}}
    )
    zero_for_false = site.admin.post(
        "/v1/agents", json={"name": "x", "model_settings": {"parallel_tool_calls": 0}}
    )
    integral = site.admin.post(
        "/v1/agents", json={"name": "x", "model_settings": {"max_tokens": 5.0}}
    )
    assert lenient.status_code == 400 and "max_tokens" in lenient.text
    assert zero_for_false.status_code == 400 and "parallel_tool_calls" in zero_for_false.text
    assert integral.status_code == 201 and integral.json()["model_settings"] == {"max_tokens": 5}


def test_a_metadata_key_reserved_for_trials_is_refused(site: Site) -> None:
    response = site.admin.post("/v1/conversations", json={"metadata": {"threadlog.trial": True}})
    assert response.status_code == 400 and "metadata" in response.text


# --- the marketplace ------------------------------------------------------------------------


def test_the_marketplace_ranks_published_agents_by_popularity_or_recency(site: Site) -> None:
    category = unique("market")
    with site.user("maker") as maker, site.user("buyer") as buyer:
        popular = create_agent(maker, name="popular", category=category)
        recent = create_agent(maker, name="recent", category=category)
        hidden = create_agent(maker, name="private", category=category)
        maker.post(f"/v1/agents/{popular['id']}/publish")
        maker.post(f"/v1/agents/{recent['id']}/publish")
        for _ in range(2):
            created = buyer.post("/v1/conversations", json={"agent": popular["id"]})
        buyer.post(f"/v1/agents/{recent['id']}/try", json={"content": "trials do not count"})
        position = created.json()["global_position"]
        by_popularity = buyer.get(
            "/v1/marketplace", params={"category": category, "min_position": position}
        ).json()
        by_recency = buyer.get(
            "/v1/marketplace", params={"category": category, "sort": "recent"}
        ).json()
    items = by_popularity["items"]
    assert [(i["name"], i["conversations"]) for i in items] == [("popular", 2), ("recent", 0)]
    assert items[0]["owner"] == popular["owner"] and items[0]["category"] == category
    assert [i["name"] for i in by_recency["items"]] == ["recent", "popular"]
    assert hidden["id"] not in {i["id"] for i in by_popularity["items"]}


def test_the_marketplace_lists_the_servers_own_agents(site: Site) -> None:
    items = site.admin.get("/v1/marketplace", params={"limit": 1000}).json()["items"]
    system = {item["name"] for item in items if item["system"]}
    assert {"assistant", "tools-demo"} <= system


# --- system agents --------------------------------------------------------------------------

AGENTS_FILE = """
[[agents]]
name = "extractor"
description = "Pulls a person out of text"
system_prompt = "{prompt}"
"""


def system_agent(client: httpx.Client, name: str) -> dict[str, Any]:
    items = client.get("/v1/agents", params={"owner": "system", "q": name}).json()["items"]
    found: dict[str, Any] = next(item for item in items if item["name"] == name)
    return found


def test_the_servers_agents_are_recorded_once_and_revised_when_the_file_changes(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(AGENTS_FILE.format(prompt="Extract."))
    settings = make_settings(agents_file=path)
    with LiveServer(settings) as server, server.client() as admin:
        first = system_agent(admin, "extractor")
    with LiveServer(settings) as server, server.client() as admin:
        unchanged = system_agent(admin, "extractor")
    path.write_text(AGENTS_FILE.format(prompt="Extract the person."))
    with LiveServer(settings) as server, server.client() as admin:
        changed = system_agent(admin, "extractor")
        events = run_once(admin, "extractor")
    assert first["owner"] == "system" and first["public"] and first["version"] == 1
    assert first["reference"] == "extractor"
    assert unchanged["version"] == 1 and unchanged["id"] == first["id"]
    assert changed["version"] == 2 and changed["system_prompt"] == "Extract the person."
    assert run_started(events)[0]["agent_version"] == 2
