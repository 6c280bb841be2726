"""Workers mode: a message stored but never queued (its API died between storing it and
queueing its run) is found by an API process and queued, and a worker runs it.

Real `threadlog serve` and `threadlog worker` processes on PostgreSQL and NATS; the
message is written to the store directly, as the API that died had left it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, cluster_environment
from tests.servers import NatsNames, delete_stream
from tests.support import create_conversation, stored_events
from threadlog.domain.events import Cause
from threadlog.infra.settings import Settings
from threadlog.infra.store.content import open_content_keys
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.stream.nats import StreamNames

CHECK_SECONDS = 1.0
# Running for one interval, then found by the next check: two intervals, and the run.
COMPLETED_WITHIN_SECONDS = 2 * CHECK_SECONDS + 10


@pytest.fixture
def cluster(
    tmp_path: Path, database_url: str, nats_url: str, nats_names: NatsNames
) -> Iterator[Cluster]:
    env = cluster_environment(
        database_url, nats_url, nats_names, THREADLOG_ORPHAN_CHECK_SECONDS=str(CHECK_SECONDS)
    )
    started = Cluster(tmp_path, env)
    yield started
    started.stop_all()
    names = StreamNames(stream=nats_names.stream, prefix=nats_names.subject_prefix)
    delete_stream(nats_url, names.run_queue_stream)


def store_message_without_queueing(database_url: str, tmp_path: Path, conversation_id: str) -> str:
    """What an API killed between storing a message and queueing its run leaves: the
    message and its RunStarted, and no ticket. Returns the run id."""
    settings = Settings(data_dir=tmp_path / "direct", database_url=database_url)
    keys = open_content_keys(settings)
    service = open_service(settings, keys)
    try:
        cause = Cause(actor="user:admin", correlation_id=uuid.uuid4().hex)
        posted = service.post_message(
            uuid.UUID(conversation_id),
            content="was I ever queued?",
            client_message_id=None,
            model="demo",
            cause=cause,
        ).value
        return posted.run_id
    finally:
        service.close()
        keys.close()


def test_a_message_stored_but_never_queued_is_queued_and_runs(
    cluster: Cluster, database_url: str, tmp_path: Path
) -> None:
    api = cluster.start_api()
    cluster.start_worker("worker")
    cluster.wait_ready()
    with cluster.client() as client:
        conversation_id = create_conversation(client)
        run_id = store_message_without_queueing(database_url, tmp_path, conversation_id)
        stored_at = time.monotonic()
        deadline = stored_at + COMPLETED_WITHIN_SECONDS
        while True:
            events = stored_events(client, conversation_id)
            if any(e["type"] == "RunCompleted" for e in events):
                break
            assert time.monotonic() < deadline, [e["type"] for e in events]
            time.sleep(0.1)
        print(f"completed {time.monotonic() - stored_at:.2f} s after it was stored")
    assert api.logged("run.unqueued_queued", run_id=run_id)
    runs = [e for e in events if e["type"] in ("RunStarted", "RunCompleted")]
    assert [(e["type"], e["data"]["run_id"]) for e in runs] == [
        ("RunStarted", run_id),
        ("RunCompleted", run_id),
    ]
