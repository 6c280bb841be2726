"""A conversation over a WebSocket, through a real server: its events out (the SSE
JSON), messages and cancels in, each answered by an ack or an error frame."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.conftest import SettingsFactory
from tests.support import (
    ADMIN_KEY,
    TERMINAL,
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    scripted_model,
    stored_events,
    wait_for_run_end,
)

TOKENS = ["The ", "answer ", "is ", "42."]
SLOW = [f"w{i} " for i in range(200)]
Frame = dict[str, Any]


@contextmanager
def socket(
    server: LiveServer, conversation_id: str, after: int | None = None, key: str = ADMIN_KEY
) -> Iterator[Any]:
    url = f"ws://127.0.0.1:{server.port}/v1/conversations/{conversation_id}/ws"
    query = f"?after={after}" if after is not None else ""
    with connect(url + query, additional_headers={"X-API-Key": key}) as ws:
        yield ws


def receive_until(ws: ClientConnection, until: Callable[[Frame], bool]) -> list[Frame]:
    """Frames until `until` holds for one (included)."""
    frames: list[Frame] = []
    while True:
        frames.append(json.loads(ws.recv(timeout=20)))
        if until(frames[-1]):
            return frames


def run_ended(frame: Frame) -> bool:
    return frame["type"] in TERMINAL


def send(ws: ClientConnection, **command: Any) -> None:
    ws.send(json.dumps(command))


def test_the_socket_sends_a_runs_events_in_the_sse_json(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "question")
        with socket(server, conversation_id) as ws:
            frames = receive_until(ws, run_ended)
        sse = read_sse(client, f"/v1/conversations/{conversation_id}/events")
    assert frames == [event.data for event in sse]
    assert [frame["position"] for frame in frames] == list(range(1, len(frames) + 1))
    assert [f["data"]["delta"] for f in frames if f["type"] == "TokenStreamed"] == TOKENS


def test_a_message_sent_on_the_socket_is_acked_before_its_events(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        with socket(server, conversation_id) as ws:
            send(ws, type="message", content="question", client_message_id="c-1", id="cmd-1")
            frames = receive_until(ws, run_ended)
        stored = stored_events(client, conversation_id)
    (ack,) = [frame for frame in frames if frame["type"] == "ack"]
    assert ack["command"] == "message" and ack["id"] == "cmd-1"
    assert (ack["position"], ack["queued"], ack["duplicate"]) == (2, False, False)
    events = [frame for frame in frames if frame["type"] != "ack"]
    before_ack = frames[: frames.index(ack)]
    assert all(frame["position"] < ack["position"] for frame in before_ack)
    assert events == stored
    posted = events[ack["position"] - 1]
    assert posted["type"] == "MessagePosted" and posted["data"]["run_id"] == ack["run_id"]
    assert posted["data"]["client_message_id"] == "c-1"
    assert events[-1]["type"] == "RunCompleted"


def test_a_message_the_busy_policy_refuses_gets_the_http_error_code(
    make_settings: SettingsFactory,
) -> None:
    slow = scripted_model(SLOW, delay=0.02)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        run_id = post_message(client, conversation_id, "long job")["run_id"]
        with socket(server, conversation_id, after=2) as ws:
            send(ws, type="message", content="me too")
            (error,) = receive_until(ws, lambda frame: frame["type"] == "error")[-1:]
        client.post(f"/v1/runs/{run_id}/cancel")
    assert (error["status"], error["code"]) == (409, "run_active")


def test_a_run_is_cancelled_through_the_socket(make_settings: SettingsFactory) -> None:
    slow = scripted_model(SLOW, delay=0.02)
    with LiveServer(make_settings(), slow) as server, server.client() as client:
        conversation_id = create_conversation(client)
        with socket(server, conversation_id) as ws:
            send(ws, type="message", content="talk for a while")
            frames = receive_until(ws, lambda frame: frame["type"] == "TokenStreamed")
            (ack,) = [frame for frame in frames if frame["type"] == "ack"]
            send(ws, type="cancel", run_id=ack["run_id"], id="stop")
            frames = receive_until(ws, run_ended)
    acks = [frame for frame in frames if frame["type"] == "ack"]
    assert acks == [{"type": "ack", "command": "cancel", "run_id": ack["run_id"], "id": "stop",
                     "status": "cancelled"}]  # fmt: skip
    assert frames[-1]["type"] == "RunCancelled"
    assert frames[-1]["data"]["run_id"] == ack["run_id"]


def test_cancelling_a_run_no_process_runs_gets_a_404_error_frame(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        with socket(server, conversation_id) as ws:
            send(ws, type="cancel", run_id=str(uuid.uuid4()), id="c")
            error = receive_until(ws, lambda frame: frame["type"] == "error")[-1]
    assert (error["status"], error["code"], error["id"]) == (404, "run_not_found", "c")


@pytest.mark.parametrize(
    ("frame", "status", "code", "mentions"),
    [
        ("this is not json", 400, "validation_error", "JSON"),
        ('{"type": "dance", "id": "d-1"}', 400, "validation_error", "dance"),
        ('{"type": "message"}', 400, "validation_error", "content"),
        ('{"type": "cancel"}', 400, "validation_error", "run_id"),
        (
            '{"type": "message", "content": "hi", "colour": "red"}',
            400,
            "validation_error",
            "colour",
        ),
        ('{"type": "message", "content": "   "}', 400, "invalid_message", "empty"),
        ('{"type": "message", "content": "' + "x" * 5000 + '"}', 413, "payload_too_large", "limit"),
    ],
    ids=["not-json", "unknown-type", "no-content", "no-run-id", "unknown-field", "blank", "big"],
)
def test_a_bad_frame_gets_an_error_frame_and_the_socket_stays_open(
    make_settings: SettingsFactory, frame: str, status: int, code: str, mentions: str
) -> None:
    settings = make_settings(max_request_bytes=4096)
    with LiveServer(settings, scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        with socket(server, conversation_id, after=1) as ws:
            ws.send(frame)
            error = json.loads(ws.recv(timeout=20))
            send(ws, type="message", content="still there?")
            ack = receive_until(ws, lambda f: f["type"] == "ack")[-1]
    assert (error["type"], error["status"], error["code"]) == ("error", status, code)
    assert mentions in error["message"]
    assert error.get("id") == ("d-1" if "d-1" in frame else None)
    assert ack["command"] == "message"


def test_reconnecting_after_a_position_resumes_with_no_duplicate_and_no_gap(
    make_settings: SettingsFactory,
) -> None:
    model = scripted_model(TOKENS * 10, delay=0.01)
    with LiveServer(make_settings(), model) as server, server.client() as client:
        conversation_id = create_conversation(client)
        post_message(client, conversation_id, "question")
        with socket(server, conversation_id) as ws:
            first = receive_until(ws, lambda frame: frame["position"] >= 6)
        with socket(server, conversation_id, after=first[-1]["position"]) as ws:
            rest = receive_until(ws, run_ended)
        stored = wait_for_run_end(client, conversation_id)
    assert rest[0]["position"] == first[-1]["position"] + 1
    assert first + rest == stored


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (f"{uuid.uuid4()}/ws", "does not exist"),
        ("{conversation_id}/ws?after=yesterday", "after"),
    ],
    ids=["unknown-conversation", "bad-after"],
)
def test_a_socket_that_cannot_follow_a_conversation_closes_with_policy_violation(
    make_settings: SettingsFactory, path: str, reason: str
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        url = f"ws://127.0.0.1:{server.port}/v1/conversations/"
        with (
            connect(
                url + path.format(conversation_id=conversation_id),
                additional_headers={"X-API-Key": ADMIN_KEY},
            ) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.recv(timeout=20)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008 and reason in closed.value.rcvd.reason


def test_a_socket_without_credentials_is_refused_at_the_handshake(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as client:
        conversation_id = create_conversation(client)
        url = f"ws://127.0.0.1:{server.port}/v1/conversations/{conversation_id}/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(url).close()
    assert refused.value.response.status_code in (401, 403)


def test_another_users_conversation_closes_the_socket_as_unknown(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(TOKENS)) as server, server.client() as admin:
        conversation_id = create_conversation(admin)
        user = admin.post("/v1/admin/users", json={"username": "stranger"}).json()
        key = admin.post(f"/v1/admin/users/{user['id']}/keys", json={}).json()["key"]
        with (
            socket(server, conversation_id, key=key) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.recv(timeout=20)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
