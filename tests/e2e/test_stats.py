"""The statistics endpoints and the message history's tool calls, through real HTTP,
on SQLite and on PostgreSQL.

Runs the server executes come from posting messages; tool calls, prices, retries
and other endings are written through the domain by a second service on the same
store (as another process would), then read with `min_position`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import httpx

from tests.e2e.conftest import SettingsFactory
from tests.histories import Run, ToolUse, ask, every_ending
from tests.histories import start_conversation as start_owned
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    scripted_model,
    wait_for_run_end,
)
from threadlog.domain.agent import system_agent_id
from threadlog.domain.application import ConversationService
from threadlog.domain.identity import user_id_for
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service

REPLY = ["Stats", " are", " counted"]
CALLER_NAME = "caller"
# The user the tests' client authenticates as; conversations are theirs unless a test
# says otherwise (owner="bob").
CALLER = str(user_id_for(CALLER_NAME))
start_conversation = partial(start_owned, owner=CALLER)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[httpx.Client, ConversationService]]:
    """A live server, a client of the user CALLER, and a second service on its store."""
    with LiveServer(settings, scripted_model(REPLY)) as server, server.client() as admin:
        key = user_key(admin, CALLER_NAME)
        service = open_service(settings)
        try:
            with server.client(key=key) as client:
                yield client, service
        finally:
            service.close()


def user_key(admin: httpx.Client, username: str, roles: tuple[str, ...] = ("user",)) -> str:
    user = admin.post("/v1/admin/users", json={"username": username, "roles": list(roles)})
    assert user.status_code == 201, user.text
    issued = admin.post(f"/v1/admin/users/{user.json()['id']}/keys", json={})
    key: str = issued.json()["key"]
    return key


def written(service: ConversationService) -> int:
    return service.recorder.max_notification_id() or 0


def get_json(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_bad_parameter(response: httpx.Response, name: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert name in body["message"], body
    assert body["details"] and name in str(body["details"]), body


def test_conversation_stats_count_messages_runs_tokens_tool_calls_timings_and_cost(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, service):
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "a run the server executes")
        events = wait_for_run_end(client, conversation_id)
        every_ending(service, UUID(conversation_id))
        stats = get_json(
            client, f"/v1/conversations/{conversation_id}/stats", min_position=written(service)
        )
    (served,) = [e["data"] for e in events if e["type"] == "RunCompleted"]
    ttfts = [10.0, 30.0, served["time_to_first_token_ms"]]
    durations = [100.0, 300.0, served["duration_ms"]]
    assert stats == {
        "conversation_id": conversation_id,
        "messages": {"assistant": 3, "user": 7},
        "runs": {
            "total": 7,
            "running": 1,
            "completed": 3,
            "failed": 1,
            "cancelled": 1,
            "interrupted": 1,
            "retried": 1,
        },
        # The served run is pinned to the `assistant` agent's version 1; the six played
        # through the service name a bare model, so they have no agent version.
        "runs_by_agent_version": {
            f"{system_agent_id('assistant')}@1": 1,
            "assistant@0": 6,
        },
        "tokens": {
            "input": 13 + served["usage"]["input_tokens"],
            "output": 7 + served["usage"]["output_tokens"],
        },
        "tool_calls": {"count": 4, "errors": 1, "by_name": {"calc": 1, "search": 3}},
        "time_to_first_token_ms": {"median": statistics.median(ttfts), "max": max(ttfts)},
        "duration_ms": {"median": statistics.median(durations), "max": max(durations)},
        "cost_usd": 0.25,
    }


def test_a_conversation_without_priced_runs_has_null_cost_and_is_counted_at_once(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, _):
        conversation_id = create_conversation(client)
        accepted = post_message(client, conversation_id, "hello")
        mine = get_json(
            client,
            f"/v1/conversations/{conversation_id}/stats",
            min_position=accepted["global_position"],
        )
        at = wait_for_run_end(client, conversation_id)[-1]["global_position"]
        done = get_json(client, f"/v1/conversations/{conversation_id}/stats", min_position=at)
    assert (mine["messages"]["user"], mine["runs"]["total"]) == (1, 1)
    assert (done["runs"]["completed"], done["messages"], done["cost_usd"]) == (
        1,
        {"assistant": 1, "user": 1},
        None,
    )


def test_stats_of_an_unknown_or_someone_elses_conversation_are_404(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, service):
        bobs = start_conversation(service, owner="bob")
        unknown = client.get(f"/v1/conversations/{UNKNOWN}/stats")
        not_mine = client.get(
            f"/v1/conversations/{bobs}/stats", params={"min_position": written(service)}
        )
    assert unknown.status_code == not_mine.status_code == 404
    assert unknown.json()["error"] == not_mine.json()["error"] == "conversation_not_found"


def test_bad_stats_parameters_get_a_400_naming_the_parameter(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, _):
        conversation_id = create_conversation(client)
        path = f"/v1/conversations/{conversation_id}/stats"
        assert_bad_parameter(client.get(path, params={"min_position": -1}), "min_position")
        assert_bad_parameter(client.get(path, params={"group_by": "day"}), "group_by")


def test_usage_groups_tokens_runs_conversations_and_cost_by_day_agent_and_user(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, service):
        helper = start_conversation(service, agent="helper")
        analyst = start_conversation(service, agent="analyst")
        bobs = start_conversation(service, owner="bob", agent="helper")
        ask(service, helper, "a", Run(input_tokens=1, output_tokens=2, cost_usd=0.5))
        ask(service, helper, "b", Run(input_tokens=3, output_tokens=4, cost_usd=0.25))
        ask(service, analyst, "c", Run(input_tokens=10, output_tokens=20))
        ask(service, bobs, "d", Run(input_tokens=100, output_tokens=200, cost_usd=9.0))
        at = written(service)
        by_agent = get_json(client, "/v1/stats/usage", group_by="agent", min_position=at)
        by_user = get_json(client, "/v1/stats/usage", group_by="user")
        by_day = get_json(client, "/v1/stats/usage")
        past = get_json(client, "/v1/stats/usage", **{"from": "2020-01-01", "to": "2020-02-01"})
    assert by_agent["groups"] == [
        {
            "key": "analyst",
            "runs": 1,
            "conversations": 1,
            "input_tokens": 10,
            "output_tokens": 20,
            "cost_usd": None,
        },
        {
            "key": "helper",
            "runs": 2,
            "conversations": 1,
            "input_tokens": 4,
            "output_tokens": 6,
            "cost_usd": 0.75,
        },
    ]
    # Only the caller's conversations: bob's run is not in the caller's usage.
    assert [(g["key"], g["runs"], g["conversations"]) for g in by_user["groups"]] == [
        (CALLER, 3, 2)
    ]
    today = datetime.now(UTC).date()
    assert [g["key"] for g in by_day["groups"]] in (
        [today.isoformat()],
        [(today - timedelta(days=1)).isoformat()],  # the runs started just before midnight
    )
    assert by_day["group_by"] == "day"
    window = datetime.fromisoformat(by_day["to"]) - datetime.fromisoformat(by_day["from"])
    assert window == timedelta(days=30)
    assert (past["from"], past["to"], past["groups"]) == (
        "2020-01-01T00:00:00+00:00",
        "2020-02-01T00:00:00+00:00",
        [],
    )


def test_bad_usage_parameters_get_a_400_naming_the_parameter(
    make_settings: SettingsFactory,
) -> None:
    cases: dict[str, dict[str, str | int]] = {
        "from": {"from": "last tuesday"},
        "to": {"to": "2026-13-01"},
        "group_by": {"group_by": "week"},
        "owner": {"owner": "bob"},
        "min_position": {"min_position": "x"},
    }
    with serving(make_settings()) as (client, _):
        for name, params in cases.items():
            assert_bad_parameter(client.get("/v1/stats/usage", params=params), name)


def test_a_usage_window_whose_from_is_after_its_to_is_empty(
    make_settings: SettingsFactory,
) -> None:
    # JSON Schema cannot say "from <= to": such a window is empty, not an error.
    with serving(make_settings()) as (client, _):
        backwards = client.get(
            "/v1/stats/usage", params={"from": "2026-02-01", "to": "2026-01-01T12:00:00Z"}
        )
    assert backwards.status_code == 200 and backwards.json()["groups"] == []


def test_popular_agents_are_ranked_by_conversations_with_runs_in_the_last_days(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, service):
        for _ in range(2):
            ask(service, start_conversation(service, agent="writer"), "w")
        coder = start_conversation(service, agent="coder")
        for _ in range(3):
            ask(service, coder, "c")
        start_conversation(service, agent="idle")
        ask(service, start_conversation(service, owner="bob", agent="bobs"), "b")
        ranked = get_json(client, "/v1/agents/popular", days=7, min_position=written(service))
        top = get_json(client, "/v1/agents/popular", limit=1)
    assert ranked == {
        "days": 7,
        "ranked_by": "conversations",
        "items": [
            {"agent": "writer", "conversations": 2, "runs": 2},
            {"agent": "coder", "conversations": 1, "runs": 3},
        ],
    }
    assert (top["days"], [item["agent"] for item in top["items"]]) == (30, ["writer"])


def test_bad_popular_agents_parameters_get_a_400_naming_the_parameter(
    make_settings: SettingsFactory,
) -> None:
    cases: list[tuple[str, dict[str, str | int]]] = [
        ("days", {"days": 0}),
        ("days", {"days": 366}),
        ("days", {"days": "a week"}),
        ("days", {"days": "1.5"}),
        ("limit", {"limit": 0}),
        ("limit", {"limit": 101}),
        ("limit", {"limit": "ten"}),
        ("since", {"since": "2026-01-01"}),
    ]
    with serving(make_settings()) as (client, _):
        for name, params in cases:
            assert_bad_parameter(client.get("/v1/agents/popular", params=params), name)


def test_an_assistant_message_shows_its_tool_calls_and_structured_output(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings()) as (client, service):
        conversation_id = start_conversation(service)
        ask(
            service,
            conversation_id,
            "what is 6 x 7?",
            Run(
                tools=[
                    ToolUse(name="calc", args={"expr": "6*7"}, result=42),
                    ToolUse(name="check", args={"value": 42}, error="checker offline"),
                ],
                output={"answer": 42},
                reply="42",
            ),
        )
        page = get_json(
            client, f"/v1/conversations/{conversation_id}/messages", min_position=written(service)
        )
    question, answer = page["items"]
    assert (question["tool_calls"], question["output"]) == (None, None)
    assert answer["output"] == {"answer": 42}
    assert [
        {key: call[key] for key in ("name", "args", "result", "error")}
        for call in answer["tool_calls"]
    ] == [
        {"name": "calc", "args": {"expr": "6*7"}, "result": 42, "error": None},
        {"name": "check", "args": {"value": 42}, "result": None, "error": "checker offline"},
    ]
    assert all(call["tool_call_id"] for call in answer["tool_calls"])


def test_stats_that_cannot_reach_min_position_in_time_answer_503_with_retry_after(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(projections=False, read_wait_seconds=0.3)
    with serving(settings) as (client, service):
        start_conversation(service)
        behind = client.get("/v1/stats/usage", params={"min_position": written(service)})
    assert behind.status_code == 503
    assert behind.headers["retry-after"] == "1"
    assert behind.json()["details"]["read_model"] == "run_stats"


def test_an_analyst_sees_every_users_usage_and_a_user_only_their_own(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    with serving(settings) as (client, service), LiveServer(settings) as other:
        with other.client() as admin:
            analyst_key = user_key(admin, "analyst", ("analyst",))
        ask(service, start_conversation(service), "mine", Run(input_tokens=1, output_tokens=1))
        ask(
            service,
            start_conversation(service, owner="bob"),
            "bob's",
            Run(input_tokens=10, output_tokens=10),
        )
        at = written(service)
        own = get_json(client, "/v1/stats/usage", group_by="user", min_position=at)
        with other.client(key=analyst_key) as analyst:
            every = get_json(analyst, "/v1/stats/usage", group_by="user", min_position=at)
            forbidden = analyst.get("/v1/conversations")
    assert [g["key"] for g in own["groups"]] == [CALLER]
    assert sorted(g["key"] for g in every["groups"]) == sorted([CALLER, "bob"])
    assert forbidden.status_code == 403  # analysts read statistics, not conversations
