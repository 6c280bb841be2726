"""A message in, an agent's tokens out, every step an event: through real HTTP,
NATS and the store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from pydantic_ai.messages import ModelMessage

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    scripted_model,
    stored_events,
    wait_for_run_end,
)

TOKENS = [f"tok{i} " for i in range(40)]


def test_a_run_streams_tokens_whose_concatenation_is_the_completed_message(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client, title="spine")
        accepted = post_message(client, conversation_id, "hello")
        events = read_sse(client, f"/v1/conversations/{conversation_id}/events")
    types = [e.event for e in events]
    assert types[:3] == ["ConversationStarted", "MessagePosted", "RunStarted"]
    assert types[-2:] == ["MessageCompleted", "RunCompleted"]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    deltas = [e.data["data"]["delta"] for e in events if e.event == "TokenStreamed"]
    assert deltas == TOKENS
    completed = events[-2].data["data"]
    assert completed["content"] == "".join(deltas) and completed["role"] == "assistant"
    assert events[-1].data["data"]["run_id"] == accepted["run_id"]
    assert events[-1].data["data"]["usage"]["output_tokens"] > 0
    assert accepted["position"] == 2


def test_a_dropped_client_reconnecting_with_last_event_id_gets_each_remaining_event_once(
    make_settings: SettingsFactory,
) -> None:
    model = scripted_model(TOKENS, delay=0.02)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hello")
        path = f"/v1/conversations/{conversation_id}/events"
        first = read_sse(client, path, until=lambda e: e.event == "TokenStreamed" and e.id >= 10)
        assert first[-1].event == "TokenStreamed"
        rest = read_sse(client, path, headers={"Last-Event-ID": str(first[-1].id)})
        stored = stored_events(client, conversation_id)
    received = first + rest
    assert [e.id for e in received] == [item["position"] for item in stored]
    assert [e.data for e in received] == stored
    assert rest[-1].event == "RunCompleted"


@pytest.mark.parametrize("moment", ["before", "during", "after"])
def test_a_client_connecting_before_during_or_after_a_run_misses_nothing(
    make_settings: SettingsFactory, moment: str
) -> None:
    model = scripted_model(TOKENS, delay=0.005)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        path = f"/v1/conversations/{conversation_id}/events"
        if moment == "before":
            poster = threading.Timer(0.3, post_message, (server.client(), conversation_id, "hi"))
            poster.start()
            received = read_sse(client, path)
            poster.join()
        else:
            post_message(client, conversation_id, "hi")
            if moment == "after":
                wait_for_run_end(client, conversation_id)
            received = read_sse(client, path)
        stored = stored_events(client, conversation_id)
    assert [e.data for e in received] == stored
    assert stored[-1]["type"] == "RunCompleted"


def test_the_after_parameter_resumes_like_last_event_id(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hi")
        stored = wait_for_run_end(client, conversation_id)
        tail = read_sse(client, f"/v1/conversations/{conversation_id}/events?after=30")
    assert [e.id for e in tail] == [item["position"] for item in stored[30:]]


def test_json_pages_cover_every_event_once(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hi")
        stored = wait_for_run_end(client, conversation_id)
        positions, after, pages = [], 0, 0
        while after is not None:
            page = client.get(
                f"/v1/conversations/{conversation_id}/events",
                params={"after": after, "limit": 7},
                headers={"accept": "application/json"},
            ).json()
            positions += [item["position"] for item in page["items"]]
            after, pages = page["next"], pages + 1
    assert positions == list(range(1, len(stored) + 1))
    assert pages == -(-len(stored) // 7)


def test_the_agent_sees_the_history_rebuilt_from_events(make_settings: SettingsFactory) -> None:
    seen: list[list[ModelMessage]] = []
    model = scripted_model(["first ", "reply"], seen=seen)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "question one")
        wait_for_run_end(client, conversation_id)
        post_message(client, conversation_id, "question two")
        wait_for_run_end(client, conversation_id)
    history = repr(seen[1])
    assert "question one" in history and "first reply" in history and "question two" in history


def test_a_model_error_ends_the_run_with_a_safe_message_and_the_conversation_goes_on(
    make_settings: SettingsFactory,
) -> None:
    failing = scripted_model(TOKENS, fail_after=3)
    with LiveServer(make_settings(), failing) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hi")
        events = wait_for_run_end(client, conversation_id)
        failed = events[-1]
        assert failed["type"] == "RunFailed"
        assert "secret" not in failed["data"]["message"]
        assert [e["data"]["delta"] for e in events if e["type"] == "TokenStreamed"] == TOKENS[:3]
        again = post_message(client, conversation_id, "still there?")
        assert again["position"] == len(events) + 1


def test_a_second_message_during_a_run_is_refused_with_409(make_settings: SettingsFactory) -> None:
    slow = scripted_model(TOKENS, delay=0.05)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "one")
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages", json={"content": "two"}
        )
        assert response.status_code == 409
        assert response.json()["error"] == "run_active"


def test_the_request_id_is_returned_and_becomes_the_events_correlation_id(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client)
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"content": "hi"},
            headers={"X-Request-ID": "req-abc-123"},
        )
        assert response.headers["x-request-id"] == "req-abc-123"
        events = wait_for_run_end(client, conversation_id)
    assert {e["correlation_id"] for e in events[1:]} == {"req-abc-123"}


def test_an_idle_stream_sends_heartbeat_comments(make_settings: SettingsFactory) -> None:
    settings = make_settings(sse_heartbeat_seconds=0.2)
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client)
        lines: list[str] = []
        with client.stream("GET", f"/v1/conversations/{conversation_id}/events") as response:
            for line in response.iter_lines():
                lines.append(line)
                if lines.count(": heartbeat") == 2:
                    break
    assert "id: 1" in lines and lines.count(": heartbeat") == 2


def test_a_server_stopping_mid_run_records_the_run_as_interrupted(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    slow = scripted_model(TOKENS, delay=0.05)
    with LiveServer(settings, slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "hi")
        read_sse(
            client,
            f"/v1/conversations/{conversation_id}/events",
            until=lambda e: e.event == "TokenStreamed",
        )
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as client:
        events = stored_events(client, conversation_id)
        assert events[-1]["type"] == "RunInterrupted"
        assert events[-1]["data"]["reason"] == "server stopped"
        assert events[-1]["data"]["retry"] is False
        assert any(e["type"] == "TokenStreamed" for e in events)
        post_message(client, conversation_id, "after the restart")
        assert wait_for_run_end(client, conversation_id)[-1]["type"] == "RunCompleted"
