"""/metrics: guarded, and its values move with real traffic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    scripted_model,
    wait_for_run_end,
)

TOKEN = "metrics-token-for-tests"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@contextmanager
def open_stream(server: LiveServer, path: str) -> Iterator[None]:
    """An SSE stream held open (in a thread) until the block ends."""
    opened, done = threading.Event(), threading.Event()

    def hold() -> None:
        with server.client() as client, client.stream("GET", path) as response:
            opened.set()
            for _ in response.iter_lines():
                if done.is_set():
                    return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert opened.wait(10)
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def test_metrics_answer_admins_and_the_metrics_token_only(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(metrics_token=TOKEN)) as server, server.client() as admin:
        user = admin.post("/v1/admin/users", json={"username": "plain"}).json()
        key = admin.post(f"/v1/admin/users/{user['id']}/keys", json={}).json()["key"]
        with server.client(None) as anonymous, server.client(key) as plain:
            assert anonymous.get("/metrics").status_code == 401
            wrong = anonymous.get("/metrics", headers={"authorization": "Bearer not-it"})
            assert wrong.status_code == 401
            assert plain.get("/metrics").status_code == 403
            assert admin.get("/metrics").status_code == 200
            scrape(anonymous)  # the token alone


def test_metrics_move_with_real_traffic(make_settings: SettingsFactory, tmp_path: Path) -> None:
    tokens = ["one", " two", " three", " four"]
    settings = make_settings(metrics_token=TOKEN)
    with LiveServer(settings, scripted_model(tokens)) as server, server.client() as client:
        before = scrape(client)
        conversation_id = create_conversation(client)
        path = f"/v1/conversations/{conversation_id}/events"
        post_message(client, conversation_id, "count to four")
        events = wait_for_run_end(client, conversation_id)
        read_sse(client, path)
        with open_stream(server, path):
            during = scrape(client)
        after = scrape(client)
    route = {"method": "POST", "path": "/v1/conversations", "status_code": "201"}
    assert moved(before, after, "threadlog_http_requests_total", app_name="threadlog", **route) == 1
    latency = "threadlog_http_request_duration_seconds_count"
    assert moved(before, after, latency, app_name="threadlog", **route) == 1
    assert moved(before, after, "threadlog_events_written_total") == len(events)
    assert moved(before, after, "threadlog_tokens_written_total") == len(tokens)
    assert moved(before, after, "threadlog_writer_batch_events_count") >= 1
    assert moved(before, after, "threadlog_writer_commit_seconds_count") >= 1
    assert moved(before, after, "threadlog_runs_ended_total", outcome="completed") == 1
    assert moved(before, after, "threadlog_model_first_token_seconds_count") == 1
    assert moved(before, after, "threadlog_model_request_seconds_count") >= 1
    assert value(during, "threadlog_open_streams", kind="sse") >= 1
    # The second catch-up (open_stream's) sent the pages the first (read_sse's) kept.
    assert moved(before, after, "threadlog_replay_pages_total", source="kept") >= 1
    assert value(after, "threadlog_replay_kept_bytes") > 0
    assert value(after, "threadlog_runs", status="completed") >= 1
    assert ("threadlog_relay_lag_events", ()) in after
    read_models = {
        dict(labels)["read_model"]
        for name, labels in after
        if labels and name == "threadlog_projection_lag_events"
    }
    assert {"conversation_list", "message_history", "runs", "run_stats"} <= read_models
