"""`threadlog serve` with no configuration: SQLite in the data dir, a NATS server
from the wheel, the demo model; it stops that NATS server cleanly on exit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from tests.support import create_conversation, post_message, read_sse, stored_events
from threadlog.infra.stream.embedded import free_port

THREADLOG = Path(sys.executable).parent / "threadlog"


class ServeProcess:
    started: list[ServeProcess] = []

    def __init__(self, cwd: Path, port: int, settings: dict[str, str] | None = None) -> None:
        """`settings`: THREADLOG_* variables besides the port (none: embedded defaults)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLOG_")}
        env.update(THREADLOG_PORT=str(port), THREADLOG_DEMO_TOKEN_DELAY_MS="1", **(settings or {}))
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = cwd / "serve.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(THREADLOG), "serve"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        ServeProcess.started.append(self)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text())
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def printed_keys(self) -> list[str]:
        """The admin keys this process printed (only a first start prints one)."""
        return re.findall(r"X-API-Key: (\S+)", self.log.read_text())

    def stop(self) -> None:
        """SIGTERM; uvicorn shuts down gracefully, then re-raises the signal (exit -15)."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) in (0, -signal.SIGTERM)
        if "nats.embedded_started" in self.log.read_text():
            assert "nats_server.stopped" in self.log.read_text()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # A failed test must not leave a server (and its NATS server) running.
    while ServeProcess.started:
        leftover = ServeProcess.started.pop()
        if leftover.process.poll() is None:
            leftover.process.send_signal(signal.SIGTERM)
            try:
                leftover.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                leftover.process.kill()


def nats_pids(data_dir: Path) -> list[int]:
    return [
        int(p.name.split("_")[1].split(".")[0]) for p in data_dir.glob("nats/nats-server_*.ports")
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_serve_runs_on_embedded_defaults_and_stops_its_nats_server(workdir: Path) -> None:
    server = ServeProcess(workdir, free_port())
    try:
        [key] = server.printed_keys()
        with httpx.Client(
            base_url=server.base_url, timeout=15, headers={"X-API-Key": key}
        ) as client:
            conversation_id = create_conversation(client, title="embedded")
            post_message(client, conversation_id, "hello demo")
            events = read_sse(client, f"/v1/conversations/{conversation_id}/events")
        reply = next(e for e in events if e.event == "MessageCompleted").data["data"]["content"]
        assert "hello demo" in reply
        assert (workdir / ".threadlog" / "events.sqlite").exists()
        # On SQLite the relay and the projections run in the API process.
        assert (
            "background_process"
            not in httpx.get(f"{server.base_url}/health/ready").json()["checks"]
        )
        pids = nats_pids(workdir / ".threadlog")
        assert pids and all(alive(pid) for pid in pids)
    finally:
        server.stop()
    assert not any(alive(pid) for pid in pids)


async def test_a_restarted_server_keeps_its_events_and_relays_none_twice(workdir: Path) -> None:
    port = free_port()
    first = ServeProcess(workdir, port)
    [key] = first.printed_keys()
    with httpx.Client(base_url=first.base_url, timeout=15, headers={"X-API-Key": key}) as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "one")
        read_sse(client, f"/v1/conversations/{conversation_id}/events")
    first.stop()
    first.log.write_text("")
    second = ServeProcess(workdir, port)
    try:
        assert second.printed_keys() == []  # the admin exists: its key is not printed again
        with httpx.Client(
            base_url=second.base_url, timeout=15, headers={"X-API-Key": key}
        ) as client:
            post_message(client, conversation_id, "two")
            read_sse(
                client,
                f"/v1/conversations/{conversation_id}/events?after=3",
                until=lambda e: e.event == "RunCompleted" and e.data["data"]["run_id"] != "",
            )
            stored = stored_events(client, conversation_id)
            while (
                stored[-1]["type"] != "RunCompleted"
                or len([e for e in stored if e["type"] == "RunCompleted"]) < 2
            ):
                time.sleep(0.05)
                stored = stored_events(client, conversation_id)
            ready = client.get("/health/ready").json()
        nats_url = f"nats://127.0.0.1:{_nats_port(workdir)}"
        deadline = time.monotonic() + 10
        while (
            int(ready["checks"]["relay_position"]) < stored[-1]["global_position"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
            ready = httpx.get(f"{second.base_url}/health/ready").json()
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info("THREADLOG")
        finally:
            await nc.close()
        assert info.state.messages == stored[-1]["global_position"]
    finally:
        second.stop()


def _nats_port(workdir: Path) -> int:
    import json

    [ports_file] = list((workdir / ".threadlog" / "nats").glob("nats-server_*.ports"))
    ports = json.loads(ports_file.read_text())
    return int(ports["nats"][0].rsplit(":", 1)[1])
