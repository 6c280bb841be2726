"""Cancelling a run: the model stream stops, the streamed tokens stay, the run ends
with RunCancelled and the conversation takes the next message."""

from __future__ import annotations

import time
import uuid

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

TOKENS = [f"w{i} " for i in range(200)]


def test_cancelling_a_run_keeps_its_tokens_and_frees_the_conversation(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(TOKENS, delay=0.02)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "talk for a while")["run_id"]
        read_sse(
            client,
            f"/v1/conversations/{conversation_id}/events",
            until=lambda e: e.event == "TokenStreamed" and e.id >= 6,
        )
        response = client.post(f"/v1/runs/{run_id}/cancel")
        assert response.status_code == 202, response.text
        events = stored_events(client, conversation_id)
        assert events[-1]["type"] == "RunCancelled"
        tokens = [e["data"]["delta"] for e in events if e["type"] == "TokenStreamed"]
        assert 3 <= len(tokens) < len(TOKENS)
        assert events[-1]["data"]["partial_content"] == "".join(tokens)
        assert not any(e["type"] in ("RunCompleted", "RunFailed") for e in events)
        post_message(client, conversation_id, "next")
        assert wait_for_run_end(client, conversation_id, timeout=30)[-1]["type"] in (
            "RunCompleted",
        )


def test_cancelling_an_unknown_run_is_404(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        response = client.post(f"/v1/runs/{uuid.uuid4()}/cancel")
        assert response.status_code == 404
        assert response.json()["error"] == "run_not_found"


def test_a_cancel_sent_to_another_api_process_reaches_the_run(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(TOKENS, delay=0.02)
    with (
        LiveServer(make_settings(), slow) as runner,
        LiveServer(make_settings(relay=False), slow) as other,
        runner.client() as runner_client,
        other.client() as other_client,
    ):
        conversation_id = create_conversation(runner_client)
        run_id = post_message(runner_client, conversation_id, "go")["run_id"]
        read_sse(
            other_client,
            f"/v1/conversations/{conversation_id}/events",
            until=lambda e: e.event == "TokenStreamed",
        )
        assert other_client.post(f"/v1/runs/{run_id}/cancel").status_code == 202
        events = wait_for_run_end(other_client, conversation_id)
    assert events[-1]["type"] == "RunCancelled"


def test_cancelling_a_run_that_already_ended_is_409(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "hi")["run_id"]
        wait_for_run_end(client, conversation_id)
        response = client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "run_already_ended"
    assert "completed" in response.json()["message"]


def test_a_queued_run_is_cancelled_before_it_starts_and_the_active_one_goes_on(
    make_settings: SettingsFactory,
) -> None:
    # Tokens 50 ms apart: every write below races the run's token flushes (see the
    # issue note: a user write can still lose every retry to a fast stream on a slow store).
    slow = scripted_model([f"w{i} " for i in range(20)], delay=0.05)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client, busy_policy="enqueue")
        active = post_message(client, conversation_id, "first")["run_id"]
        queued = post_message(client, conversation_id, "second")
        assert queued["queued"] is True
        response = client.post(f"/v1/runs/{queued['run_id']}/cancel")
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 30
        events = stored_events(client, conversation_id)
        while events[-1]["type"] != "RunCompleted" and time.monotonic() < deadline:
            time.sleep(0.05)
            events = stored_events(client, conversation_id)
    started = [e["data"]["run_id"] for e in events if e["type"] == "RunStarted"]
    cancelled = [e["data"]["run_id"] for e in events if e["type"] == "RunCancelled"]
    completed = [e["data"]["run_id"] for e in events if e["type"] == "RunCompleted"]
    assert started == [active] and completed == [active]
    assert cancelled == [queued["run_id"]]
