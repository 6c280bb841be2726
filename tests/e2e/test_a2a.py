"""A2A 1.0 against a real server, driven by the protocol's own client (`a2a-sdk`):
cards, send, stream, get, cancel, a re-subscribe that resumes from its cursor, tenancy
and bad input (docs/a2a.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client, ClientCallContext
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotCancelableError, TaskNotFoundError
from google.protobuf.json_format import MessageToDict

from tests.e2e.conftest import SettingsFactory
from tests.support import ADMIN_KEY, LiveServer, scripted_model

WORDS = ["Hel", "lo", " wor", "ld"]
SLOW = [f"w{i} " for i in range(60)]


def _token_of_new_user(server: LiveServer, name: str) -> str:
    """A JWT of a newly registered user."""
    username, password = f"{name}-{uuid.uuid4().hex[:8]}", "correct horse battery"
    with server.client(key=None) as anonymous:
        registered = anonymous.post(
            "/v1/users/register", json={"username": username, "password": password}
        )
        assert registered.status_code == 201, registered.text
        login = anonymous.post("/v1/users/login", json={"username": username, "password": password})
        assert login.status_code == 200, login.text
        token: str = login.json()["access_token"]
        return token


def _key_of_new_user(server: LiveServer, name: str) -> str:
    with server.client() as admin:
        created = admin.post(
            "/v1/admin/users",
            json={"username": f"{name}-{uuid.uuid4().hex[:8]}", "roles": ["user"]},
        )
        assert created.status_code == 201, created.text
        issued = admin.post(f"/v1/admin/users/{created.json()['id']}/keys", json={})
        assert issued.status_code == 201, issued.text
        key: str = issued.json()["key"]
        return key


@asynccontextmanager
async def a2a_client(
    server: LiveServer,
    path: str = "/a2a/assistant",
    *,
    key: str = ADMIN_KEY,
    token: str | None = None,
    streaming: bool = True,
) -> AsyncIterator[Client]:
    """The SDK's client, the card resolved from `path`, with an API key or a JWT."""
    credentials = {"Authorization": f"Bearer {token}"} if token else {"X-API-Key": key}
    http = httpx.AsyncClient(headers=credentials, timeout=httpx.Timeout(30.0))
    try:
        factory = ClientFactory(ClientConfig(httpx_client=http, streaming=streaming))
        client = await factory.create_from_url(server.base_url + path)
        yield client
    finally:
        await http.aclose()


def message(text: str, context_id: str | None = None) -> SendMessageRequest:
    sent = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)])
    if context_id is not None:
        sent.context_id = context_id
    return SendMessageRequest(message=sent)


def position(item: StreamResponse) -> int:
    kind = item.WhichOneof("payload")
    assert kind is not None
    meta = MessageToDict(getattr(item, kind).metadata)
    return int(meta["threadlog"]["position"])


def texts(items: list[StreamResponse]) -> str:
    return "".join(
        part.text
        for item in items
        if item.HasField("artifact_update")
        for part in item.artifact_update.artifact.parts
    )


def final_state(items: list[StreamResponse]) -> int:
    """The state the stream ended in (its opening task's, when the run had ended by then)."""
    states = [
        i.status_update.status.state if i.HasField("status_update") else i.task.status.state
        for i in items
        if i.HasField("status_update") or i.HasField("task")
    ]
    return states[-1]


async def test_cards_send_stream_and_get(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(WORDS, delay=0.1)) as server:
        # The root card is the default agent's; every agent has its own under /a2a/{agent}.
        with server.client() as plain:
            card = plain.get("/.well-known/agent-card.json").json()
            assert card["name"] == "assistant"
            interface = card["supportedInterfaces"][0]
            assert interface == {
                "url": server.base_url + "/a2a/assistant",
                "protocolBinding": "JSONRPC",
                "protocolVersion": "1.0",
            }
            tools = plain.get("/a2a/tools-demo/.well-known/agent-card.json").json()
            assert {s["name"] for s in tools["skills"]} >= {"calculator", "current_time"}
            assert tools["capabilities"]["streaming"] is True
            assert set(tools["securitySchemes"]) == {"bearer", "apiKey"}
            assert plain.get("/a2a/nobody/.well-known/agent-card.json").status_code == 404
        with server.client(key=None) as anonymous:
            assert anonymous.get("/.well-known/agent-card.json").status_code == 401

        async with a2a_client(server, "") as client:  # resolved from the root card
            sent = message("hi")
            items = [item async for item in client.send_message(sent)]
        first = items[0]
        assert first.HasField("task")
        assert first.task.status.state in (
            TaskState.TASK_STATE_SUBMITTED,
            TaskState.TASK_STATE_WORKING,
        )
        assert first.task.history[0].parts[0].text == "hi"
        assert first.task.history[0].role == Role.ROLE_USER
        assert first.task.history[0].message_id == sent.message.message_id
        streamed = texts(items)
        if first.task.artifacts:
            streamed = first.task.artifacts[0].parts[0].text + streamed
        assert streamed == "".join(WORDS)
        assert final_state(items) == TaskState.TASK_STATE_COMPLETED
        positions = [position(i) for i in items]
        assert positions == sorted(positions)
        task_id, context_id = first.task.id, first.task.context_id

        async with a2a_client(server) as client:
            task = await client.get_task(GetTaskRequest(id=task_id))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert task.context_id == context_id
            assert task.artifacts[0].parts[0].text == "".join(WORDS)
            assert [m.role for m in task.history] == [Role.ROLE_USER, Role.ROLE_AGENT]
            one = await client.get_task(GetTaskRequest(id=task_id, history_length=1))
            assert [m.role for m in one.history] == [Role.ROLE_AGENT]

        # Without streaming: SendMessage answers the ended task; the same context goes on.
        async with a2a_client(server, streaming=False) as client:
            answers = [a async for a in client.send_message(message("again", context_id))]
        assert len(answers) == 1
        again = answers[0].task
        assert again.context_id == context_id and again.id != task_id
        assert again.status.state == TaskState.TASK_STATE_COMPLETED
        assert again.artifacts[0].parts[0].text == "".join(WORDS)
        with server.client() as plain:
            conversation = plain.get(f"/v1/conversations/{context_id}").json()
            assert conversation["message_count"] == 4
            assert conversation["agent"] == "assistant"


async def test_a_resubscribe_resumes_after_its_cursor_with_nothing_lost_or_repeated(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(SLOW, delay=0.03)) as server:
        async with a2a_client(server) as client:
            seen: list[StreamResponse] = []
            stream = client.send_message(message("talk"))
            async for item in stream:
                seen.append(item)
                if len([i for i in seen if i.HasField("artifact_update")]) >= 5:
                    break  # the connection drops mid-run
            await stream.aclose()  # type: ignore[attr-defined]
            task_id = seen[0].task.id
            cursor = position(seen[-1])

            # A subscribe without a cursor: the task so far, then what follows.
            snapshot = client.subscribe(SubscribeToTaskRequest(id=task_id))
            head = await anext(snapshot)
            assert head.HasField("task") and head.task.id == task_id
            await snapshot.aclose()  # type: ignore[attr-defined]

            context = ClientCallContext(service_parameters={"Last-Event-ID": str(cursor)})
            rest = [
                item
                async for item in client.subscribe(
                    SubscribeToTaskRequest(id=task_id), context=context
                )
            ]
            with pytest.raises(InvalidParamsError):  # a cursor no stream ever carried
                far = ClientCallContext(service_parameters={"Last-Event-ID": "999999"})
                async for _ in client.subscribe(SubscribeToTaskRequest(id=task_id), context=far):
                    pass
        assert not any(item.HasField("task") for item in rest)
        positions = [position(i) for i in seen[1:] + rest]
        assert len(positions) == len(set(positions)), "an update came twice"
        assert positions == sorted(positions)
        assert min(position(i) for i in rest) > cursor
        assert texts(seen) + texts(rest) == "".join(SLOW)
        assert final_state(rest) == TaskState.TASK_STATE_COMPLETED


async def test_cancelling_a_running_task(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(SLOW, delay=0.05)) as server:
        async with a2a_client(server) as client:
            stream = client.send_message(message("go on"))
            items: list[StreamResponse] = []
            async for item in stream:
                items.append(item)
                if item.HasField("artifact_update"):
                    break
            task_id = items[0].task.id
            cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
            assert cancelled.id == task_id
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
            # The stream that was open ends with the cancel.
            async for item in stream:
                items.append(item)
            assert final_state(items) == TaskState.TASK_STATE_CANCELED
            assert 0 < len(texts(items)) < len("".join(SLOW))
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=task_id))
            task = await client.get_task(GetTaskRequest(id=task_id))
            assert task.status.state == TaskState.TASK_STATE_CANCELED


async def test_another_users_task_and_context_are_not_found(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(WORDS)) as server:
        async with a2a_client(server, streaming=False) as owner:
            answers = [a async for a in owner.send_message(message("mine"))]
        answer = answers[0].task
        stranger_key = _key_of_new_user(server, "stranger")
        async with a2a_client(server, key=stranger_key) as stranger:
            for task_id in (answer.id, str(uuid.uuid4())):
                with pytest.raises(TaskNotFoundError):
                    await stranger.get_task(GetTaskRequest(id=task_id))
                with pytest.raises(TaskNotFoundError):
                    await stranger.cancel_task(CancelTaskRequest(id=task_id))
                with pytest.raises(TaskNotFoundError):
                    async for _ in stranger.subscribe(SubscribeToTaskRequest(id=task_id)):
                        pass
            for context_id in (answer.context_id, str(uuid.uuid4()), "not-a-uuid"):
                with pytest.raises(TaskNotFoundError):
                    async for _ in stranger.send_message(message("yours?", context_id)):
                        pass
            # The stranger's own conversation works.
            own = [a async for a in stranger.send_message(message("mine too"))]
            assert final_state(own) == TaskState.TASK_STATE_COMPLETED
            assert own[0].task.context_id != answer.context_id
        # A JWT works as a key does, with the same rules.
        async with a2a_client(server, token=_token_of_new_user(server, "jwt")) as with_jwt:
            with pytest.raises(TaskNotFoundError):
                await with_jwt.get_task(GetTaskRequest(id=answer.id))
            mine = [a async for a in with_jwt.send_message(message("hello"))]
            assert final_state(mine) == TaskState.TASK_STATE_COMPLETED
            task = await with_jwt.get_task(GetTaskRequest(id=mine[0].task.id))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED


def _rpc(client: httpx.Client, body: Any, **headers: str) -> dict[str, Any]:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    response = client.post(
        "/a2a/assistant",
        content=content,
        headers={"content-type": "application/json", **headers},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_bad_input_is_a_json_rpc_error_never_a_500(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings(), scripted_model(WORDS)) as server, server.client() as client:
        assert _rpc(client, b"{not json")["error"]["code"] == -32700
        assert _rpc(client, b"[]")["error"]["code"] == -32600
        assert _rpc(client, {"jsonrpc": "1.0", "id": 1, "method": "GetTask"})["error"] == {
            "code": -32600,
            "message": 'jsonrpc must be "2.0"',
        }
        unknown = _rpc(client, {"jsonrpc": "2.0", "id": "x", "method": "message/send"})
        assert unknown["id"] == "x" and unknown["error"]["code"] == -32601
        bad_params: list[Any] = [None, [], {"id": 5}, {"message": {"parts": []}}]
        for params in bad_params:
            answer = _rpc(
                client, {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": params}
            )
            assert answer["error"]["code"] in (-32602, -32001), (params, answer)
        empty = {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": " "}]}}
        answer = _rpc(client, {"jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": empty})
        assert answer["error"]["code"] == -32602
        files = {"message": {"messageId": "m2", "parts": [{"url": "https://x/y.png"}]}}
        answer = _rpc(client, {"jsonrpc": "2.0", "id": 4, "method": "SendMessage", "params": files})
        assert answer["error"]["code"] == -32602
        old = _rpc(
            client,
            {"jsonrpc": "2.0", "id": 5, "method": "GetTask", "params": {"id": "x"}},
            **{"A2A-Version": "0.3"},
        )
        assert old["error"]["code"] == -32009
        # Unknown agent: HTTP 404 (no JSON-RPC endpoint there); no credentials: 401.
        assert client.post("/a2a/nobody", json={}).status_code == 404
        with server.client(key=None) as anonymous:
            assert anonymous.post("/a2a/assistant", json={}).status_code == 401
        # A curl-style SendMessage (the README's example) works without the SDK.
        sent = {"message": {"messageId": "m3", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}
        answer = _rpc(
            client,
            {"jsonrpc": "2.0", "id": 6, "method": "SendMessage", "params": sent},
            **{"A2A-Version": "1.0"},
        )
        task = answer["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        assert task["artifacts"][0]["parts"][0]["text"] == "".join(WORDS)
        # The same messageId again (in the same context) is the same task, not a second one.
        sent["message"]["contextId"] = task["contextId"]
        again = _rpc(client, {"jsonrpc": "2.0", "id": 7, "method": "SendMessage", "params": sent})
        assert again["result"]["task"]["id"] == task["id"]
        assert [m["role"] for m in again["result"]["task"]["history"]] == [
            "ROLE_USER",
            "ROLE_AGENT",
        ]


async def test_an_agent_made_through_the_api_has_a_card_for_who_may_use_it(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings(), scripted_model(WORDS)) as server:
        owner, stranger = _key_of_new_user(server, "maker"), _key_of_new_user(server, "other")
        with server.client(key=owner) as client:
            created = client.post("/v1/agents", json={"name": "poet", "description": "Verse."})
            assert created.status_code == 201, created.text
            agent_id = created.json()["id"]
            card = client.get(f"/a2a/{agent_id}/.well-known/agent-card.json")
            assert card.status_code == 200, card.text
            assert card.json()["description"] == "Verse."
            assert card.json()["supportedInterfaces"][0]["url"].endswith(f"/a2a/{agent_id}")
        with server.client(key=stranger) as client:  # private: not even its card
            assert client.get(f"/a2a/{agent_id}/.well-known/agent-card.json").status_code == 404
        async with a2a_client(server, f"/a2a/{agent_id}", key=owner) as client:
            items = [item async for item in client.send_message(message("hi"))]
        assert final_state(items) == TaskState.TASK_STATE_COMPLETED
        context_id = items[0].task.context_id
        with server.client(key=owner) as client:
            conversation = client.get(f"/v1/conversations/{context_id}").json()
            assert conversation["agent"] == agent_id
            runs = client.get("/v1/runs", params={"conversation_id": context_id}).json()["items"]
            assert [run["agent_id"] for run in runs] == [agent_id]
