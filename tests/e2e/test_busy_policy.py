"""A message that arrives during a run follows the conversation's busy policy:
reject (409, the default), enqueue (runs after), interrupt (cancels, then runs)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    scripted_model,
    wait_for_run_end,
)

SLOW = [f"s{i} " for i in range(30)]


def runs_in_order(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(event type, run id) of every run boundary, in position order."""
    bounds = ("RunStarted", "RunCompleted", "RunFailed", "RunCancelled")
    return [(e["type"], e["data"]["run_id"]) for e in events if e["type"] in bounds]


def test_an_enqueued_message_runs_after_the_active_run(make_settings: SettingsFactory) -> None:
    model = scripted_model(SLOW, delay=0.01)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client, busy_policy="enqueue")
        first = post_message(client, conversation_id, "one")
        second = post_message(client, conversation_id, "two")
        assert second["queued"] is True and first["queued"] is False
        deadline = time.monotonic() + 30
        events = wait_for_run_end(client, conversation_id, timeout=30)
        while sum(e["type"] == "RunCompleted" for e in events) < 2:
            assert time.monotonic() < deadline, "the queued run did not end"
            time.sleep(0.05)
            events = wait_for_run_end(client, conversation_id, timeout=30)
    assert runs_in_order(events) == [
        ("RunStarted", first["run_id"]),
        ("RunCompleted", first["run_id"]),
        ("RunStarted", second["run_id"]),
        ("RunCompleted", second["run_id"]),
    ]


def test_an_interrupting_message_cancels_the_active_run_then_runs(
    make_settings: SettingsFactory,
) -> None:
    model = scripted_model(SLOW, delay=0.02)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client, busy_policy="interrupt")
        first = post_message(client, conversation_id, "one")
        read_sse(
            client,
            f"/v1/conversations/{conversation_id}/events",
            until=lambda e: e.event == "TokenStreamed",
        )
        second = post_message(client, conversation_id, "two")
        events = wait_for_run_end(client, conversation_id, timeout=30)
    assert runs_in_order(events) == [
        ("RunStarted", first["run_id"]),
        ("RunCancelled", first["run_id"]),
        ("RunStarted", second["run_id"]),
        ("RunCompleted", second["run_id"]),
    ]


def post_at_once(clients: list[httpx.Client], path: str) -> list[int]:
    """Posts one message from each client at the same moment; their status codes."""
    statuses: list[int] = []
    barrier = threading.Barrier(len(clients))

    def post(client: httpx.Client) -> None:
        barrier.wait()
        statuses.append(client.post(path, json={"content": "race"}).status_code)

    threads = [threading.Thread(target=post, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_two_api_processes_posting_at_once_start_one_run(make_settings: SettingsFactory) -> None:
    model = scripted_model(SLOW, delay=0.01)
    with (
        LiveServer(make_settings(), model) as first,
        LiveServer(make_settings(relay=False), model) as second,
        first.client() as one,
        second.client() as two,
    ):
        for _ in range(5):
            conversation_id = create_conversation(one)
            statuses = post_at_once([one, two], f"/v1/conversations/{conversation_id}/messages")
            assert sorted(statuses) == [202, 409]
            events = wait_for_run_end(one, conversation_id, timeout=30)
            assert [e["position"] for e in events] == list(range(1, len(events) + 1))
            assert [t for t, _ in runs_in_order(events)] == ["RunStarted", "RunCompleted"]


def test_an_unknown_busy_policy_is_400_naming_the_field(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as client:
        response = client.post("/v1/conversations", json={"busy_policy": "shove"})
    assert response.status_code == 400 and "busy_policy" in response.json()["message"]
