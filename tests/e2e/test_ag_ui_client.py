"""A real AG-UI client: `@ag-ui/client`'s HttpAgent (the protocol's TypeScript SDK) under
Node runs a conversation against threadlog, drops its stream mid-run, resumes it with the
cursor of the last event it received, and runs a second turn (tests/e2e/ag_ui_client.cjs).

The client is installed from the npm registry, pinned, into a cache directory
(`THREADLOG_NODE_CACHE`, default `~/.cache/threadlog/node`) on first use. Without `node`
and `npm` the test is skipped, saying so; this machine has both, so here it runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import SettingsFactory
from tests.support import LiveServer, scripted_model, stored_events

CLIENT_PACKAGE = "@ag-ui/client@1.0.0"
SCRIPT = Path(__file__).with_name("ag_ui_client.cjs")
TOKENS = [f"t{i} " for i in range(60)]


def _client_dir() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run @ag-ui/client's HttpAgent; not on PATH")
    cache = Path(os.environ.get("THREADLOG_NODE_CACHE", Path.home() / ".cache/threadlog/node"))
    target = cache / CLIENT_PACKAGE.replace("/", "+")
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:  # pytest-xdist workers install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "node_modules/@ag-ui/client/package.json").exists():
            (target / "package.json").write_text(
                '{"name": "threadlog-ag-ui-test", "private": true}'
            )
            installed = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--save-exact", CLIENT_PACKAGE],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert installed.returncode == 0, installed.stdout + installed.stderr
    return target


@pytest.mark.timeout(600)  # the first run installs the client from the npm registry
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_http_agent_runs_a_conversation_drops_and_resumes(make_settings: SettingsFactory) -> None:
    client_dir = _client_dir()
    slow = scripted_model(TOKENS, delay=0.03)
    with LiveServer(make_settings(), slow) as server, server.client() as admin:
        thread = str(uuid.uuid4())
        ran = subprocess.run(
            [
                "node",
                str(SCRIPT),
                str(client_dir),
                server.base_url,
                admin.headers["X-API-Key"],
                thread,
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        # The client validates every event against the protocol's schemas and warns of
        # anything it had to drop or could not place: nothing.
        assert "[ag-ui]" not in ran.stderr and "Warning" not in ran.stderr, ran.stderr[-3000:]
        report = json.loads(ran.stdout)
        stored = stored_events(admin, thread)

    reply = "".join(TOKENS)
    # Dropped after 5 tokens: the client held part of the reply, and a cursor.
    dropped = report["afterDrop"]
    assert dropped["contents"] == 5 and dropped["cursor"]
    partial = [m for m in dropped["messages"] if m["role"] == "assistant"]
    assert len(partial) == 1 and reply.startswith(partial[0]["content"])
    assert partial[0]["content"] != reply
    # Resumed with Last-Event-ID: the same message, completed, nothing doubled.
    resumed = [m for m in report["afterResume"] if m["role"] == "assistant"]
    assert [m["content"] for m in resumed] == [reply]
    assert resumed[0]["id"] == partial[0]["id"]
    # The second turn: the snapshot replaced the client's view with the thread's.
    final = report["final"]
    assert [m["role"] for m in final] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in final] == ["talk to me", reply, "and again", reply]
    # The run went on while the client was away, and was posted once: two user
    # messages, two runs, both completed.
    kinds = [e["type"] for e in stored]
    assert kinds.count("MessagePosted") == 2
    assert kinds.count("RunCompleted") == 2
    assert [e["data"]["client_message_id"] for e in stored if e["type"] == "MessagePosted"] == [
        "ag-ui:user-1",
        "ag-ui:user-2",
    ]
    # Every event the client got carried a cursor.
    assert all(event["cursor"] for event in report["seen"] if event["type"] != "RUN_ERROR")
