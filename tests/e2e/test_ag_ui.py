"""AG-UI (`POST /v1/ag-ui`, docs/ag-ui.md): every event the endpoint emits parses with
the protocol's own models (`ag-ui-protocol`) with no extra or missing field; a stream
resumed after any cursor continues with nothing lost or repeated; a run outlives its
client; tenancy and bad input as on every other route."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from ag_ui.core import Event, MessagesSnapshotEvent
from pydantic import BaseModel, TypeAdapter

from tests.e2e.conftest import SettingsFactory
from tests.servers import NatsNames
from tests.support import (
    LiveServer,
    new_user,
    scripted_model,
    settings_for,
    stored_events,
    wait_for_run_end,
)

EVENT = TypeAdapter(Event)
TOKENS = [f"w{i} " for i in range(40)]


def run_input(
    thread_id: str, *messages: dict[str, Any], run_id: str | None = None
) -> dict[str, Any]:
    return {
        "threadId": thread_id,
        "runId": run_id or str(uuid.uuid4()),
        "messages": list(messages),
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {},
    }


def user(text: str, message_id: str | None = None) -> dict[str, Any]:
    return {"id": message_id or str(uuid.uuid4()), "role": "user", "content": text}


def _no_extras(model: Any, where: str) -> None:
    """The model and every model in it took only the fields its class declares."""
    if isinstance(model, BaseModel):
        assert not model.model_extra, f"{where}: extra fields {sorted(model.model_extra)}"
        for name in type(model).model_fields:
            _no_extras(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for index, item in enumerate(model):
            _no_extras(item, f"{where}[{index}]")


def strictly(event: dict[str, Any]) -> Any:
    """The event parsed by ag-ui-protocol's models: no extra field anywhere, none missing
    (it validates), and dumped back it is the same JSON (nothing coerced or dropped)."""
    parsed = EVENT.validate_python(event)
    _no_extras(parsed, event["type"])
    assert parsed.model_dump(mode="json", by_alias=True) == event
    return parsed


def read_stream(
    client: httpx.Client,
    body: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(SSE id, event) pairs of one POST; with `stop_after`, disconnects after that many."""
    received: list[tuple[str, dict[str, Any]]] = []
    with client.stream(
        "POST",
        "/v1/ag-ui",
        json=body,
        params=params,
        headers={"accept": "text/event-stream", **(headers or {})},
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    event = json.loads(fields["data"])
                    received.append((fields["id"], event))
                    if stop_after is not None and len(received) >= stop_after:
                        break
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
    return received


def types(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [event["type"] for _, event in events]


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(e["delta"] for _, e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def test_a_run_streams_as_ag_ui_events_that_the_protocols_models_parse_strictly(
    make_settings: SettingsFactory,
) -> None:
    hello = scripted_model(["Hello", ", ", "world"])
    with LiveServer(make_settings(), hello) as server, server.client() as client:
        thread = str(uuid.uuid4())
        run_id = str(uuid.uuid4())
        events = read_stream(client, run_input(thread, user("hi"), run_id=run_id))
        for _, event in events:
            strictly(event)
        assert types(events) == [
            "RUN_STARTED",
            "MESSAGES_SNAPSHOT",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_FINISHED",
        ]
        started, snapshot = events[0][1], events[1][1]
        assert started["threadId"] == thread and started["runId"] == run_id
        assert started["protocolVersion"] == "1.0"
        assert [m["content"] for m in snapshot["messages"]] == ["hi"]
        assert text_of(events) == "Hello, world"
        finished = events[-1][1]
        assert finished["outcome"] == {"type": "success"}
        assert finished["runId"] == run_id
        # Every event carries its position, and its SSE id is its cursor.
        stored = stored_events(client, thread)
        for sse_id, event in events:
            assert event["metadata"]["threadlog"]["cursor"] == sse_id
            assert 1 <= event["metadata"]["threadlog"]["position"] <= len(stored)
        # The thread is a conversation of the caller's, with the default agent.
        conversation = client.get(f"/v1/conversations/{thread}").json()
        assert conversation["agent"] == "assistant"
        assert stored[-1]["type"] == "RunCompleted"


def test_tool_calls_and_steps_map_and_parse(
    tmp_path: Path, nats_url: str, nats_names: NatsNames
) -> None:
    settings = settings_for(tmp_path, database_url=None, nats_url=nats_url, names=nats_names)
    with LiveServer(settings) as server, server.client() as client:
        thread = str(uuid.uuid4())
        events = read_stream(
            client,
            run_input(thread, user("what time is it? use the clock")),
            params={"agent": "tools-demo"},
        )
        for _, event in events:
            strictly(event)
        kinds = types(events)
        assert kinds[0] == "RUN_STARTED" and kinds[-1] == "RUN_FINISHED", kinds
        assert "TOOL_CALL_START" in kinds and "TOOL_CALL_RESULT" in kinds, kinds
        start = kinds.index("TOOL_CALL_START")
        assert kinds[start : start + 4] == [
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "STEP_STARTED",
        ] or kinds[start : start + 3] == ["TOOL_CALL_START", "TOOL_CALL_END", "STEP_STARTED"]
        result = kinds.index("TOOL_CALL_RESULT")
        assert kinds[result - 1] == "STEP_FINISHED"
        # A second run on the thread: its snapshot holds the first run, tool calls and all.
        again = read_stream(client, run_input(thread, user("thanks")))
        snapshot = MessagesSnapshotEvent.model_validate(again[1][1])
        roles = [m.role for m in snapshot.messages]
        assert roles[:2] == ["user", "assistant"] and "tool" in roles, roles
        for _, event in again:
            strictly(event)


def test_a_dropped_stream_resumes_after_any_cursor_with_nothing_lost_or_repeated(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(TOKENS, delay=0.03)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        thread = str(uuid.uuid4())
        body = run_input(thread, user("talk"))
        first = read_stream(client, body, stop_after=8)  # then the client drops
        assert types(first)[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"]
        # The run went on without its client.
        stored = wait_for_run_end(client, thread)
        assert stored[-1]["type"] == "RunCompleted"
        # Resume after the last event received: the same input again with Last-Event-ID.
        cursor = first[-1][0]
        rest = read_stream(client, body, headers={"Last-Event-ID": cursor})
        for _, event in rest:
            strictly(event)
        assert types(rest)[0] == "RUN_STARTED"
        assert "MESSAGES_SNAPSHOT" not in types(rest)  # the client has it
        assert text_of(first) + text_of(rest) == "".join(TOKENS)
        assert rest[-1][1]["type"] == "RUN_FINISHED"
        # The whole stream, read at once, is the reference: resuming after each of its
        # cursors gives exactly its remainder (re-opened messages aside).
        whole = read_stream(client, body)
        streamed = [
            (c, e) for c, e in whole if e["type"] not in ("RUN_STARTED", "MESSAGES_SNAPSHOT")
        ]
        for index, (cursor, _) in enumerate(streamed[:-1]):
            resumed = read_stream(client, body, params={"after": cursor})
            tail = [e for _, e in resumed if e["type"] != "RUN_STARTED"]
            expected = [e for _, e in streamed[index + 1 :]]
            # Only a text message open at the cursor is opened again, first.
            if (
                tail
                and tail[0]["type"] == "TEXT_MESSAGE_START"
                and (not expected or expected[0] != tail[0])
            ):
                tail = tail[1:]
            assert _without_meta(tail) == _without_meta(expected), cursor
            assert [e["metadata"]["threadlog"]["cursor"] for e in tail] == [
                e["metadata"]["threadlog"]["cursor"] for e in expected
            ]
        # Nothing was posted twice: one user message, one run.
        stored = stored_events(client, thread)
        assert [e["type"] for e in stored].count("MessagePosted") == 1


def _without_meta(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "metadata"} for e in events]


def test_a_join_without_a_new_message_follows_the_active_run(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(TOKENS, delay=0.02)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        thread = str(uuid.uuid4())
        read_stream(client, run_input(thread, user("go")), stop_after=3)
        # Another tab: the thread's messages as it knows them (none), no new message.
        joined = read_stream(client, run_input(thread, run_id="watcher"))
        for _, event in joined:
            strictly(event)
        assert types(joined)[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"]
        assert text_of(joined) == "".join(TOKENS)
        assert joined[-1][1]["type"] == "RUN_FINISHED"
        # Joining an idle thread: the snapshot, and the run ends at once.
        idle = read_stream(client, run_input(thread), params={"snapshot": 1})
        assert types(idle) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
        window = idle[1][1]
        assert len(window["messages"]) == 1 and window["messages"][0]["role"] == "assistant"
        older = window["metadata"]["threadlog"]["window"]
        assert older["more"] is True
        page = client.get(older["older"]).json()
        assert [m["role"] for m in page["items"]] == ["user"]


def test_cancelled_and_failed_runs_end_as_the_protocol_says(make_settings: SettingsFactory) -> None:
    slow = scripted_model(TOKENS, delay=0.03)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        thread = str(uuid.uuid4())
        body = run_input(thread, user("go"))
        first = read_stream(client, body, stop_after=4)
        run_id = first[0][1]["metadata"]["threadlog"]["runId"]
        assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 202
        rest = read_stream(client, body, headers={"Last-Event-ID": first[-1][0]})
        for _, event in rest:
            strictly(event)
        assert rest[-1][1]["type"] == "RUN_FINISHED"
        assert rest[-1][1]["outcome"] == {"type": "cancelled"}
    failing = scripted_model(["a", "b", "c"], fail_after=2)
    with LiveServer(make_settings(), failing) as server, server.client() as client:
        events = read_stream(client, run_input(str(uuid.uuid4()), user("go")))
        for _, event in events:
            strictly(event)
        assert events[-1][1]["type"] == "RUN_ERROR"
        assert "secret" not in events[-1][1]["message"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_another_users_thread_is_404_and_bad_input_is_400(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(["ok"])) as server, server.client() as admin:
        alice = new_user(server, admin, f"alice-{uuid.uuid4().hex[:8]}", ["user"])
        mallory = new_user(server, admin, f"mallory-{uuid.uuid4().hex[:8]}", ["user"])
        thread = str(uuid.uuid4())
        read_stream(alice, run_input(thread, user("mine")))
        for body in (run_input(thread, user("give it to me")), run_input(thread)):
            answer = mallory.post("/v1/ag-ui", json=body)
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"] == "conversation_not_found"
        assert len(stored_events(alice, thread)) == 6  # nothing of mallory's
        bad: list[tuple[Any, str]] = [
            ({"runId": "r", "messages": []}, "threadId"),
            ({**run_input(thread), "threadId": "not-a-uuid"}, "threadId"),
            (
                {**run_input(thread), "messages": [{"id": "m", "role": "robot", "content": "x"}]},
                "role",
            ),
            ({**run_input(thread), "messages": [user("   ")]}, "content"),
            ({**run_input(thread), "runId": ""}, "runId"),
            ({**run_input(thread), "messages": "hello"}, "messages"),
            (
                {**run_input(thread), "messages": [{**user("x"), "content": [{"text": "x"}]}]},
                "type",
            ),
            ("not json at all", ""),
        ]
        for body, named in bad:
            if isinstance(body, str):
                answer = alice.post(
                    "/v1/ag-ui", content=body, headers={"content-type": "application/json"}
                )
            else:
                answer = alice.post("/v1/ag-ui", json=body)
            assert answer.status_code == 400, (body, answer.text)
            error = answer.json()
            assert error["error"] and error["message"], error
            assert named in json.dumps(error), (named, error)
        unknown_agent = alice.post(
            "/v1/ag-ui", json=run_input(str(uuid.uuid4()), user("x")), params={"agent": "nope"}
        )
        assert unknown_agent.status_code == 400
        assert unknown_agent.json()["error"] == "unknown_agent"
        mismatch = alice.post(
            "/v1/ag-ui", json=run_input(thread, user("x")), params={"agent": "tools-demo"}
        )
        assert mismatch.status_code == 409, mismatch.text
        past = alice.post("/v1/ag-ui", json=run_input(thread), headers={"Last-Event-ID": "999"})
        assert past.status_code == 409, past.text
        assert past.json()["error"] == "position_not_reached"
        with server.client(key=None) as anonymous:
            assert anonymous.post("/v1/ag-ui", json=run_input(thread)).status_code == 401
        # A JWT works as an API key does: its user's own thread, and 404 for alice's.
        with server.client(key=None) as anonymous:
            name, password = f"jwt-{uuid.uuid4().hex[:8]}", "correct horse battery"
            anonymous.post("/v1/users/register", json={"username": name, "password": password})
            login = anonymous.post("/v1/users/login", json={"username": name, "password": password})
            bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
            mine = str(uuid.uuid4())
            events = read_stream(anonymous, run_input(mine, user("hi")), headers=bearer)
            assert types(events)[-1] == "RUN_FINISHED"
            assert anonymous.get(f"/v1/conversations/{mine}", headers=bearer).status_code == 200
            theirs = anonymous.post("/v1/ag-ui", json=run_input(thread), headers=bearer)
            assert theirs.status_code == 404, theirs.text
