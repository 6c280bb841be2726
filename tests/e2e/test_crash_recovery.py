"""Embedded mode: `threadlog serve` SIGKILLed mid-run and started again on the same data
dir takes a new message on that conversation within 5 s of its restart.

"Within 5 s" is counted beyond what starting `threadlog serve` takes on this machine at
all (its first start, measured in the same test): on a loaded machine a start alone can
take seconds, and that is not what recovery costs.

Real OS processes on the embedded defaults (SQLite and NATS in the data dir). The orphan
check's interval stays at its default (30 s): the restart itself ends the dead run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import THREADLOG
from tests.support import ADMIN_KEY, create_conversation, post_message, stored_events
from threadlog.infra.stream.embedded import free_port

ACCEPTED_WITHIN_SECONDS = 5.0


class Serve:
    """`threadlog serve` on the embedded defaults, in a data dir shared across restarts."""

    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLOG_")}
        env.update(
            THREADLOG_DATA_DIR=str(data_dir),
            THREADLOG_PORT=str(port),
            THREADLOG_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY,
            # A demo reply of some 40 tokens takes seconds: the kill lands mid-run.
            THREADLOG_DEMO_TOKEN_DELAY_MS="150",
            THREADLOG_LOG_FORMAT="json",
        )
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(THREADLOG), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


def client_for(port: int) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=10, headers={"X-API-Key": ADMIN_KEY}
    )


def wait_ready(client: httpx.Client, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if client.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("threadlog serve never became ready")


def post_until_accepted(
    client: httpx.Client, conversation_id: str, seconds: float
) -> dict[str, Any]:
    """Posts until a 202 (refused connections, 409 and 503 are tried again)."""
    deadline = time.monotonic() + seconds
    answers = []
    while time.monotonic() < deadline:
        try:
            response = client.post(
                f"/v1/conversations/{conversation_id}/messages", json={"content": "back?"}
            )
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 202:
            accepted: dict[str, Any] = response.json()
            return accepted
        answers.append(response.status_code)
        assert response.status_code in (409, 503), response.text
        time.sleep(0.05)
    raise AssertionError(f"no 202 within {seconds} s; answers: {sorted(set(answers))}")


def wait_for(client: httpx.Client, conversation_id: str, what: str, seconds: float) -> list[Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        events = stored_events(client, conversation_id)
        if any(e["type"] == what for e in events):
            return events
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {seconds} s")


def test_a_serve_killed_mid_run_takes_a_new_message_within_5_s_of_its_restart(
    tmp_path: Path, serving: list[Serve]
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    serving.append(Serve(data_dir, port, tmp_path / "serve-1.log"))
    with client_for(port) as client:
        wait_ready(client)
        first_start = time.monotonic() - serving[0].started
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "tell me something long")["run_id"]
        wait_for(client, conversation_id, "TokenStreamed", 20)
    serving[0].process.kill()
    serving[0].process.wait()

    restarted = Serve(data_dir, port, tmp_path / "serve-2.log")
    serving.append(restarted)
    with client_for(port) as client:
        accepted = post_until_accepted(client, conversation_id, 30)
        seconds = time.monotonic() - restarted.started
        print(f"a new message accepted {seconds:.2f} s after the restart")
        print(f"(the first start took {first_start:.2f} s to be ready)")
        assert seconds <= first_start + ACCEPTED_WITHIN_SECONDS
        events = wait_for(client, conversation_id, "RunCompleted", 30)
    assert [e["position"] for e in events] == list(range(1, len(events) + 1))
    dead = [e for e in events if e["data"].get("run_id") == run_id]
    endings = [e for e in dead if e["type"].startswith("Run") and e["type"] != "RunStarted"]
    assert [(e["type"], e["data"]["reason"], e["data"]["retry"]) for e in endings] == [
        ("RunInterrupted", "process lost", False)
    ]
    assert dead[-1] == endings[0]  # nothing of the dead run after its ending
    completed = [e for e in events if e["type"] == "RunCompleted"]
    assert [e["data"]["run_id"] for e in completed] == [accepted["run_id"]]


def test_a_restart_stops_the_nats_server_a_killed_serve_left_running(
    tmp_path: Path, serving: list[Serve]
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    serving.append(Serve(data_dir, port, tmp_path / "serve-1.log"))
    with client_for(port) as client:
        wait_ready(client)
    [leftover] = nats_pids(data_dir)
    serving[0].process.kill()
    serving[0].process.wait()
    assert alive(leftover)  # a session of its own: the kill did not reach it

    serving.append(Serve(data_dir, port, tmp_path / "serve-2.log"))
    with client_for(port) as client:
        wait_ready(client)
    assert not alive(leftover)
    assert len(nats_pids(data_dir)) == 1


def nats_pids(data_dir: Path) -> list[int]:
    return [int(p.stem.rsplit("_", 1)[1]) for p in data_dir.glob("nats/nats-server_*.ports")]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "X"
