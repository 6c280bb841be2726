"""Test helpers: a live HTTP server in a thread, an SSE reader, scripted models."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.servers import NatsNames
from threadlog.http.app import create_app
from threadlog.infra.settings import Settings
from threadlog.infra.stream.embedded import free_port
from threadlog.infra.tracing import Tracing

TERMINAL = {"RunCompleted", "RunFailed", "RunCancelled"}
# Every test server bootstraps its admin (roles admin and user) with this key.
ADMIN_KEY = "tlk_test-admin-key-0123456789"


def settings_for(
    tmp_path: Path, *, database_url: str | None, nats_url: str, names: NatsNames, **changes: Any
) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        nats_url=nats_url,
        nats_stream=names.stream,
        nats_subject_prefix=names.subject_prefix,
        demo_token_delay_ms=1,
        sse_heartbeat_seconds=1,
        log_format="json",
        log_level="WARNING",
        bootstrap_admin_key=ADMIN_KEY,
        # Tests poll; the rate-limit tests turn the limits on themselves.
        rate_limit_per_key=0,
        rate_limit_per_ip=0,
    ).replace(**changes)


def scripted_model(
    tokens: list[str],
    *,
    delay: float = 0.0,
    fail_after: int | None = None,
    seen: list[list[ModelMessage]] | None = None,
) -> FunctionModel:
    """Streams `tokens`; with `fail_after`, raises after that many."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        if seen is not None:
            seen.append(list(messages))
        for index, token in enumerate(tokens):
            if index == fail_after:
                raise RuntimeError("model exploded: secret internal detail")
            if delay:
                await asyncio.sleep(delay)
            yield token

    return FunctionModel(stream_function=stream, model_name="scripted")


class LiveServer:
    """The real app under uvicorn on a free port, in a background thread."""

    def __init__(
        self, settings: Settings, model: Model | None = None, tracing: Tracing | None = None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings, model=model, tracing=tracing),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def client(self, key: str | None = ADMIN_KEY, **headers: str) -> httpx.Client:
        """A client that authenticates with `key` (the admin's by default; None: anonymous)."""
        if key is not None:
            headers["X-API-Key"] = key
        return httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(15.0), headers=headers)


@dataclass(frozen=True)
class SSEEvent:
    id: int
    event: str
    data: dict[str, Any]


def parse_sse(lines: Iterator[str]) -> Iterator[SSEEvent]:
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields and "id" in fields:
                yield SSEEvent(
                    int(fields["id"]), fields.get("event", ""), json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def read_sse(
    client: httpx.Client,
    path: str,
    *,
    until: Callable[[SSEEvent], bool] = lambda e: e.event in TERMINAL,
    headers: dict[str, str] | None = None,
) -> list[SSEEvent]:
    """Reads the stream until `until` holds for an event (included), then disconnects."""
    received: list[SSEEvent] = []
    with client.stream(
        "GET", path, headers={"accept": "text/event-stream", **(headers or {})}
    ) as r:
        assert r.status_code == 200, r.read()
        for event in parse_sse(r.iter_lines()):
            received.append(event)
            if until(event):
                break
    return received


def create_conversation(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


def post_message(client: httpx.Client, conversation_id: str, content: str) -> dict[str, Any]:
    response = client.post(
        f"/v1/conversations/{conversation_id}/messages", json={"content": content}
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def stored_events(client: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(
            f"/v1/conversations/{conversation_id}/events",
            params={"after": after, "limit": 1000},
            headers={"accept": "application/json"},
        ).json()
        items.extend(page["items"])
        if page["next"] is None:
            return items
        after = page["next"]


def wait_for_run_end(
    client: httpx.Client, conversation_id: str, timeout: float = 20
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = stored_events(client, conversation_id)
        if events and events[-1]["type"] in TERMINAL:
            return events
        time.sleep(0.05)
    raise TimeoutError("the run did not end")


def as_stored(event: dict[str, Any]) -> dict[str, Any]:
    """A served event as the store (and JetStream) hold it: its content sealed again."""
    stored = {k: v for k, v in event.items() if k not in ("erased", "sealed")}
    stored["data"] = {**event["data"], **event.get("sealed", {})}
    return stored


def new_user(
    server: LiveServer, admin: httpx.Client, username: str, roles: list[str]
) -> httpx.Client:
    """A new user with `roles`, made by an admin, and a client holding a key of theirs."""
    created = admin.post("/v1/admin/users", json={"username": username, "roles": roles})
    assert created.status_code == 201, created.text
    issued = admin.post(f"/v1/admin/users/{created.json()['id']}/keys", json={})
    assert issued.status_code == 201, issued.text
    return server.client(key=issued.json()["key"])


_counter = itertools.count()


def unique(name: str) -> str:
    """A name no other test of the run uses (usernames, agent names: unique per server)."""
    return f"{name}-{next(_counter)}-{time.monotonic_ns() % 1_000_000_000}"
