"""Embedded mode: a run whose API process was killed is found and ended by the next API.

Real `threadlog serve` OS processes on PostgreSQL and NATS, runs executing in the API
process itself (no workers). The API is SIGKILLed mid-run and started again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster, cluster_environment
from tests.servers import NatsNames
from tests.support import create_conversation, post_message, stored_events

ENDED_WITHIN_SECONDS = 30


@pytest.fixture
def cluster(
    tmp_path: Path, database_url: str, nats_url: str, nats_names: NatsNames
) -> Iterator[Cluster]:
    env = cluster_environment(
        database_url,
        nats_url,
        nats_names,
        THREADLOG_WORKERS="false",
        THREADLOG_ORPHAN_CHECK_SECONDS="1",
        # A demo reply of some 40 tokens takes seconds: the API dies in the middle.
        THREADLOG_DEMO_TOKEN_DELAY_MS="150",
    )
    started = Cluster(tmp_path, env)
    yield started
    started.stop_all()


def wait_for(client: httpx.Client, conversation_id: str, what: str, seconds: float) -> list[Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        events = stored_events(client, conversation_id)
        if any(e["type"] == what for e in events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {seconds} s")


def test_a_run_whose_api_was_killed_ends_as_interrupted_once_an_api_runs_again(
    cluster: Cluster,
) -> None:
    api = cluster.start_api()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "tell me something long")["run_id"]
        wait_for(client, conversation_id, "TokenStreamed", 20)
    api.kill()

    cluster.start_api()
    with cluster.client() as client:
        events = wait_for(client, conversation_id, "RunInterrupted", ENDED_WITHIN_SECONDS)
        # The conversation takes messages again: the next run completes.
        post_message(client, conversation_id, "are you back?")
        events = wait_for(client, conversation_id, "RunCompleted", 30)
    assert [e["position"] for e in events] == list(range(1, len(events) + 1))
    first_run = [e for e in events if e["data"].get("run_id") == run_id]
    endings = [e for e in first_run if e["type"].startswith("Run") and e["type"] != "RunStarted"]
    assert [(e["type"], e["data"]["reason"], e["data"]["retry"]) for e in endings] == [
        ("RunInterrupted", "process lost", False)
    ]
    assert first_run[-1] == endings[0]  # nothing of that run after its ending


def test_a_run_still_running_in_a_live_api_is_left_alone(cluster: Cluster) -> None:
    cluster.start_api()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "tell me something long")
        # Several checks pass while the run streams (1 s apart, two misses needed).
        events = wait_for(client, conversation_id, "RunCompleted", 60)
    assert not any(e["type"] == "RunInterrupted" for e in events)
