"""Real `threadlog` OS processes for end-to-end tests: an API and its workers.

Each process logs JSON lines to a file of its own, which tests read to learn what
it did (which worker took a run, say). Tests SIGKILL or SIGSTOP them at will.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.servers import NatsNames
from tests.support import ADMIN_KEY, SSEEvent, parse_sse
from threadlog.infra.stream.embedded import free_port

THREADLOG = Path(sys.executable).parent / "threadlog"
START_SECONDS = 60
ENDINGS = {"RunCompleted", "RunFailed", "RunCancelled"}


def cluster_environment(
    database_url: str, nats_url: str, names: NatsNames, **changes: str
) -> dict[str, str]:
    """The environment of every process of a scaled-out cluster (runs go to workers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLOG_")}
    env.update(
        THREADLOG_DATABASE_URL=database_url,
        THREADLOG_NATS_URL=nats_url,
        THREADLOG_NATS_STREAM=names.stream,
        THREADLOG_NATS_SUBJECT_PREFIX=names.subject_prefix,
        THREADLOG_WORKERS="true",
        THREADLOG_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY,
        THREADLOG_DEMO_TOKEN_DELAY_MS="5",
        THREADLOG_SSE_HEARTBEAT_SECONDS="1",
        THREADLOG_LOG_FORMAT="json",
        THREADLOG_LOG_LEVEL="INFO",
    )
    env.update(changes)
    return env


class ThreadlogProcess:
    """One `threadlog` command in its own OS process, logging JSON lines to a file."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(THREADLOG), command], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def logged(self, event: str, **fields: Any) -> bool:
        return any(
            record.get("event") == event and all(record.get(k) == v for k, v in fields.items())
            for record in self.log_records()
        )

    def running(self) -> bool:
        return self.logged("worker.running")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text())
            if time.monotonic() > deadline:
                raise TimeoutError(self.log.read_text())
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """An API process and worker processes sharing one database and one NATS."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self._tmp_path = tmp_path
        self._env = env
        self.processes: list[ThreadlogProcess] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def _start(self, command: str, name: str, **env: str) -> ThreadlogProcess:
        data_dir = self._tmp_path / name
        data_dir.mkdir(exist_ok=True)
        full_env = {**self._env, "THREADLOG_DATA_DIR": str(data_dir), **env}
        process = ThreadlogProcess(command, full_env, self._tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def start_api(self, *, wait: bool = True) -> ThreadlogProcess:
        """Ready (with `wait`) before any worker starts; workers started meanwhile race it
        to create the tables, which each process survives. An API started again (after
        a kill) listens on the same port."""
        api = self._start("serve", "api", THREADLOG_PORT=str(self.port))
        if wait:
            api.wait_until(self.api_ready)
        return api

    def start_worker(self, name: str) -> ThreadlogProcess:
        return self._start("worker", name)

    def wait_ready(self) -> None:
        for process in self.processes:
            if process.alive():
                process.wait_until(
                    self.api_ready if process.command == "serve" else process.running
                )

    def api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(30.0), headers={"X-API-Key": ADMIN_KEY}
        )

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


def run_events(
    client: httpx.Client,
    conversation_id: str,
    *,
    until: Callable[[SSEEvent], bool],
    meanwhile: Callable[[SSEEvent], None] = lambda _: None,
) -> list[SSEEvent]:
    """The conversation's SSE stream from its start until `until` holds; `meanwhile`
    sees every event as it arrives (the stream stays open while it acts)."""
    received: list[SSEEvent] = []
    with client.stream(
        "GET",
        f"/v1/conversations/{conversation_id}/events",
        headers={"accept": "text/event-stream"},
    ) as response:
        assert response.status_code == 200
        for event in parse_sse(response.iter_lines()):
            received.append(event)
            meanwhile(event)
            if until(event):
                return received
    raise AssertionError("the stream closed before the run ended")


def assert_gapless(events: list[SSEEvent]) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1))
