"""Three ways to run a message: accepted at once (202), blocking (`?wait=true`),
and streaming (the POST answers with the run's own events)."""

from __future__ import annotations

from tests.e2e.conftest import SettingsFactory
from tests.support import LiveServer, create_conversation, parse_sse, scripted_model

TOKENS = ["The ", "answer ", "is ", "42."]


def test_waiting_answers_with_the_final_message_and_usage(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages?wait=true",
            json={"content": "question"},
        )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "completed"
    assert result["reply"] == "".join(TOKENS)
    assert result["usage"]["output_tokens"] > 0


def test_waiting_on_a_failing_run_answers_the_safe_failure(make_settings: SettingsFactory) -> None:
    failing = scripted_model(TOKENS, fail_after=1)
    with LiveServer(make_settings(), failing) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages?wait=true", json={"content": "q"}
        )
    result = response.json()
    assert response.status_code == 200 and result["status"] == "failed"
    assert result["error"] == "run_error" and "secret" not in result["error_message"]


def test_a_wait_longer_than_the_limit_answers_202_running(make_settings: SettingsFactory) -> None:
    slow = scripted_model(TOKENS * 20, delay=0.05)
    settings = make_settings(run_wait_seconds=0.2)
    with LiveServer(settings, slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages?wait=true", json={"content": "q"}
        )
    assert response.status_code == 202 and response.json()["status"] == "running"


def test_streaming_a_post_sends_this_runs_events_and_closes(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        with client.stream(
            "POST",
            f"/v1/conversations/{conversation_id}/messages",
            json={"content": "question"},
            headers={"accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 202
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(parse_sse(response.iter_lines()))
    assert events[0].event == "MessagePosted"
    assert events[-1].event == "RunCompleted"
    assert [e.data["data"]["delta"] for e in events if e.event == "TokenStreamed"] == TOKENS


def test_an_invalid_wait_value_is_400(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages?wait=maybe", json={"content": "q"}
        )
    assert response.status_code == 400 and "wait" in response.text
