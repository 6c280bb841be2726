"""Bad input gets a clear 4xx with a JSON body naming the problem, and stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import BACKENDS
from tests.servers import NatsNames, delete_stream
from tests.support import (
    LiveServer,
    create_conversation,
    post_message,
    read_sse,
    scripted_model,
    settings_for,
    stored_events,
    wait_for_run_end,
)

MAX_MESSAGE_BYTES = 200_000


@pytest.fixture(scope="module", params=BACKENDS)
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> Iterator[httpx.Client]:
    database_url = (
        request.getfixturevalue("session_database_url") if request.param == "postgres" else None
    )
    names = NatsNames.new()
    settings = settings_for(
        Path(tmp_path_factory.mktemp("bad-input")),
        database_url=database_url,
        nats_url=nats_url,
        names=names,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_request_bytes=1_000_000,
    )
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as http:
        yield http
    delete_stream(nats_url, names.stream)


@pytest.fixture
def conversation(client: httpx.Client) -> str:
    return create_conversation(client)


def messages_path(conversation_id: str) -> str:
    return f"/v1/conversations/{conversation_id}/messages"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "details", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["error"] == code
    assert "Traceback" not in response.text
    return body


def test_an_unknown_conversation_is_404(client: httpx.Client) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(client.get(f"/v1/conversations/{unknown}"), 404, "conversation_not_found")
    assert_error(client.post(messages_path(unknown), json={"content": "x"}), 404)
    assert_error(client.get(f"/v1/conversations/{unknown}/events"), 404)


def test_a_path_that_is_not_a_conversation_id_is_404(client: httpx.Client) -> None:
    assert_error(client.get("/v1/conversations/not-a-uuid"), 404, "not_found")


def test_malformed_json_is_400(client: httpx.Client, conversation: str) -> None:
    response = client.post(
        messages_path(conversation),
        content=b'{"content": "x"',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400)


def test_a_wrong_field_type_is_400_naming_the_field(
    client: httpx.Client, conversation: str
) -> None:
    body = assert_error(client.post(messages_path(conversation), json={"content": 42}), 400)
    assert "content" in body["message"]


def test_a_missing_field_is_400_naming_the_field(client: httpx.Client, conversation: str) -> None:
    body = assert_error(client.post(messages_path(conversation), json={}), 400)
    assert "content" in body["message"]


def test_an_unknown_field_is_400_naming_the_field(client: httpx.Client) -> None:
    body = assert_error(client.post("/v1/conversations", json={"titel": "typo"}), 400)
    assert "titel" in body["message"]


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
def test_empty_or_blank_content_is_400(
    client: httpx.Client, conversation: str, content: str
) -> None:
    assert_error(
        client.post(messages_path(conversation), json={"content": content}), 400, "validation_error"
    )


def test_content_over_the_limit_is_413(client: httpx.Client, conversation: str) -> None:
    response = client.post(
        messages_path(conversation), json={"content": "x" * (MAX_MESSAGE_BYTES + 1)}
    )
    assert_error(response, 413, "message_too_large")


def test_a_body_over_the_request_limit_is_413(client: httpx.Client, conversation: str) -> None:
    response = client.post(messages_path(conversation), json={"content": "x" * 2_000_000})
    assert_error(response, 413)


@pytest.mark.parametrize(
    "raw", [b'{"content": "a\\ud800b"}', b'{"content": "\xed\xa0\x80"}', b'{"content": "\xff"}']
)
def test_lone_surrogates_and_invalid_utf8_are_400(
    client: httpx.Client, conversation: str, raw: bytes
) -> None:
    response = client.post(
        messages_path(conversation), content=raw, headers={"content-type": "application/json"}
    )
    assert_error(response, 400)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 40, ""])
def test_a_last_event_id_that_is_not_a_position_is_400(
    client: httpx.Client, conversation: str, value: str
) -> None:
    response = client.get(
        f"/v1/conversations/{conversation}/events", headers={"Last-Event-ID": value}
    )
    assert_error(response, 400)


def test_an_after_beyond_any_position_is_400_for_json_pages(
    client: httpx.Client, conversation: str
) -> None:
    response = client.get(
        f"/v1/conversations/{conversation}/events?after={10**30}",
        headers={"accept": "application/json"},
    )
    assert_error(response, 400)


def test_an_after_that_is_not_a_position_is_400(client: httpx.Client, conversation: str) -> None:
    assert_error(client.get(f"/v1/conversations/{conversation}/events?after=x"), 400)


def test_failed_requests_leave_no_events_behind(client: httpx.Client, conversation: str) -> None:
    before = stored_events(client, conversation)
    client.post(messages_path(conversation), json={"content": ""})
    client.post(messages_path(conversation), json={"content": 1})
    client.post(messages_path(conversation), json={"content": "x" * (MAX_MESSAGE_BYTES + 1)})
    client.post(
        messages_path(conversation), content=b"{", headers={"content-type": "application/json"}
    )
    assert stored_events(client, conversation) == before


@pytest.mark.parametrize(
    "content",
    ["nul \x00 char", "😀" * 25_000, "é\u0301 combining, \u2028 separators"],
    ids=["nul", "emoji-100kB", "unicode"],
)
def test_unusual_text_is_stored_and_streamed_back_byte_exact(
    client: httpx.Client, conversation: str, content: str
) -> None:
    post_message(client, conversation, content)
    wait_for_run_end(client, conversation)
    streamed = read_sse(
        client,
        f"/v1/conversations/{conversation}/events",
        until=lambda e: e.event == "MessagePosted",
    )
    assert streamed[-1].data["data"]["content"].encode() == content.encode()
    stored = [e for e in stored_events(client, conversation) if e["type"] == "MessagePosted"]
    assert stored[-1]["data"]["content"].encode() == content.encode()


def test_the_same_client_message_id_twice_gives_the_first_answer(
    client: httpx.Client, conversation: str
) -> None:
    body = {"content": "once", "client_message_id": "client-42"}
    first = client.post(messages_path(conversation), json=body).json()
    wait_for_run_end(client, conversation)
    second = client.post(messages_path(conversation), json=body)
    assert second.status_code == 202
    assert (second.json()["message_id"], second.json()["run_id"]) == (
        first["message_id"],
        first["run_id"],
    )
    posted = [e for e in stored_events(client, conversation) if e["type"] == "MessagePosted"]
    assert len(posted) == 1


def test_health_and_readiness_answer(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["store"] == "ok"


def test_the_openapi_schema_lists_every_route(client: httpx.Client) -> None:
    schema = client.get("/schema/openapi.json").json()
    assert {
        "/v1/conversations",
        "/v1/conversations/{conversation_id}",
        "/v1/conversations/{conversation_id}/messages",
        "/v1/conversations/{conversation_id}/events",
        "/health",
        "/health/ready",
    } <= set(schema["paths"])
