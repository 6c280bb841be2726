"""Background runs through real HTTP: post in the background, read the run, wait for
its result, list the caller's runs; on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SettingsFactory
from tests.support import LiveServer, create_conversation, read_sse, scripted_model

TOKENS = ["The ", "answer ", "is ", "42."]
SLOW = [f"w{i} " for i in range(200)]


def post_background(client: httpx.Client, conversation_id: str, content: str) -> httpx.Response:
    response = client.post(
        f"/v1/conversations/{conversation_id}/messages",
        params={"background": "true"},
        json={"content": content},
    )
    assert response.status_code == 202, response.text
    return response


def result(client: httpx.Client, run_id: str, timeout: float = 20) -> dict[str, Any]:
    response = client.get(f"/v1/runs/{run_id}/result", params={"timeout": timeout})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_background_post_answers_202_with_the_runs_location(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = post_background(client, conversation_id, "question")
    accepted = response.json()
    assert response.headers["location"] == f"/v1/runs/{accepted['run_id']}"
    assert accepted["conversation_id"] == conversation_id and accepted["position"] == 2


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"background": "true", "wait": "true"}, {}),
        ({"background": "true"}, {"accept": "text/event-stream"}),
    ],
    ids=["wait", "stream"],
)
def test_background_wins_over_another_way_to_answer(
    make_settings: SettingsFactory, params: dict[str, str], headers: dict[str, str]
) -> None:
    # Both are valid alone and JSON Schema cannot forbid the pair: background decides.
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages",
            params=params,
            headers=headers,
            json={"content": "q"},
        )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/runs/{response.json()['run_id']}"


def test_a_run_is_readable_right_after_its_post_while_it_runs(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(SLOW, delay=0.02)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        accepted = post_background(client, conversation_id, "long job").json()
        at_once = client.get(f"/v1/runs/{accepted['run_id']}")
        response = client.get(
            f"/v1/runs/{accepted['run_id']}", params={"min_position": accepted["global_position"]}
        )
        client.post(f"/v1/runs/{accepted['run_id']}/cancel")
    assert at_once.status_code == 200, at_once.text  # found without min_position too
    assert at_once.json()["run_id"] == accepted["run_id"]
    assert response.status_code == 200, response.text
    run = response.json()
    assert (run["run_id"], run["conversation_id"], run["message_id"]) == (
        accepted["run_id"],
        conversation_id,
        accepted["message_id"],
    )
    assert (run["status"], run["attempt"], run["model"], run["ended_at"]) == (
        "running",
        1,
        "scripted",
        None,
    )
    assert run["started_at"] is not None and run["usage"] is None


def test_a_completed_run_shows_its_usage_times_and_no_error(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_background(client, conversation_id, "q").json()["run_id"]
        result(client, run_id)
        run = client.get(f"/v1/runs/{run_id}").json()
    assert (run["status"], run["attempt"], run["error"]) == ("completed", 1, None)
    assert run["usage"]["output_tokens"] > 0 and run["duration_ms"] > 0
    assert run["created_at"] <= run["started_at"] <= run["ended_at"]
    assert run["result_url"] == f"/v1/runs/{run_id}/result"


def test_the_result_waits_for_the_run_and_answers_its_reply_and_usage(
    make_settings: SettingsFactory,
) -> None:
    model = scripted_model(TOKENS, delay=0.05)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        accepted = post_background(client, conversation_id, "q").json()
        body = result(client, accepted["run_id"])
    assert (body["status"], body["content"], body["message_id"]) == (
        "completed",
        "".join(TOKENS),
        accepted["message_id"],
    )
    assert body["usage"]["output_tokens"] > 0 and body["reply_message_id"] is not None
    assert body["error"] is None


def test_the_result_of_a_failed_run_is_its_safe_error(make_settings: SettingsFactory) -> None:
    failing = scripted_model(TOKENS, fail_after=1)
    with LiveServer(make_settings(), failing) as server, server.client() as client:
        conversation_id = create_conversation(client)
        body = result(client, post_background(client, conversation_id, "q").json()["run_id"])
    assert (body["status"], body["error"]) == ("failed", "run_error")
    assert "secret" not in body["error_message"]


def test_the_result_of_a_cancelled_run_says_so_with_the_partial_reply(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(SLOW, delay=0.02)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_background(client, conversation_id, "q").json()["run_id"]
        read_sse(
            client,
            f"/v1/conversations/{conversation_id}/events",
            until=lambda e: e.event == "TokenStreamed",
        )
        assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 202
        body = result(client, run_id)
    assert (body["status"], body["cancel_reason"]) == ("cancelled", "requested")
    assert body["content"].startswith("w0 ")


def test_a_result_not_ready_in_time_is_408_with_the_runs_status(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(SLOW, delay=0.05)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_background(client, conversation_id, "q").json()["run_id"]
        response = client.get(f"/v1/runs/{run_id}/result", params={"timeout": "0.3"})
        client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 408, response.text
    body = response.json()
    assert body["error"] == "run_not_ended" and body["details"]["status"] == "running"


@pytest.mark.parametrize("path", ["/v1/runs/{}", "/v1/runs/{}/result?timeout=0"])
def test_an_unknown_run_is_404(make_settings: SettingsFactory, path: str) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        response = client.get(path.format(uuid.uuid4()))
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "run_not_found"


@pytest.mark.parametrize("timeout", ["soon", "-1", "61", "nan", "inf"])
def test_a_result_timeout_that_is_not_0_to_60_seconds_is_400(
    make_settings: SettingsFactory, timeout: str
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_background(client, conversation_id, "q").json()["run_id"]
        response = client.get(f"/v1/runs/{run_id}/result", params={"timeout": timeout})
    assert response.status_code == 400, response.text
    assert "timeout" in response.json()["message"]


def test_runs_are_listed_newest_first_filtered_and_paged(make_settings: SettingsFactory) -> None:
    failing = scripted_model(TOKENS, fail_after=1)
    with LiveServer(make_settings(), failing) as server, server.client() as client:
        first, second = create_conversation(client), create_conversation(client)
        run_ids = []
        for conversation_id in (first, first, second):
            run_ids.append(post_background(client, conversation_id, "q").json()["run_id"])
            result(client, run_ids[-1])
        pages = [client.get("/v1/runs", params={"limit": 2}).json()]
        pages.append(client.get("/v1/runs", params={"limit": 2, "cursor": pages[0]["next"]}).json())
        of_first = client.get("/v1/runs", params={"conversation_id": first}).json()
        failed = client.get("/v1/runs", params={"status": "failed"}).json()
        completed = client.get("/v1/runs", params={"status": "completed"}).json()
    newest_first = run_ids[::-1]
    assert [run["run_id"] for page in pages for run in page["items"]] == newest_first
    assert pages[1]["next"] is None
    assert [run["run_id"] for run in of_first["items"]] == newest_first[1:]
    assert [run["run_id"] for run in failed["items"]] == newest_first
    assert completed["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "sleeping"}, "status"),
        ({"conversation_id": "not-a-uuid"}, "conversation_id"),
        ({"cursor": "!!"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_run_list_parameter_is_400_naming_it(
    make_settings: SettingsFactory, params: dict[str, str], field: str
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        response = client.get("/v1/runs", params=params)
    assert response.status_code == 400, response.text
    assert field in response.json()["message"]
