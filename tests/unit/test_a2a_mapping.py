"""Stored events -> A2A task and updates (http/a2a_mapping.py), and the JSON-RPC parsing."""

from typing import Any

import msgspec
import pytest

from threadlog.http.a2a_mapping import LoggedItem, TaskFold
from threadlog.http.a2a_protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    RpcError,
    SendMessageParams,
    StreamResponse,
    params_as,
    parse_request,
    request_id_of,
)

RUN, OTHER, CONTEXT = "run-1", "run-0", "ctx-1"
TIME = "2026-12-01T03:00:00.000001+00:00"


def item(position: int, kind: str, **data: Any) -> LoggedItem:
    return LoggedItem(kind, position, TIME, data)


def wire(updates: list[StreamResponse]) -> list[dict[str, Any]]:
    decoded: list[dict[str, Any]] = msgspec.json.decode(msgspec.json.encode(updates))
    return decoded


def test_a_run_with_tools_progress_and_a_retry() -> None:
    fold = TaskFold(RUN, CONTEXT)
    posted = item(3, "MessagePosted", run_id=RUN, message_id="m", client_message_id="a2a-m")
    assert fold.apply(posted) == []
    assert fold.task().status.state == "TASK_STATE_SUBMITTED"
    assert fold.task().history[0].message_id == "a2a-m"
    (started,) = wire(fold.apply(item(4, "RunStarted", run_id=RUN, model="m1")))
    assert started["statusUpdate"]["status"]["state"] == "TASK_STATE_WORKING"
    assert started["statusUpdate"]["metadata"]["threadlog"]["position"] == 4
    (token,) = wire(fold.apply(item(5, "TokenStreamed", run_id=RUN, part=0, delta="par")))
    assert token["artifactUpdate"]["artifact"]["parts"] == [{"text": "par"}]
    assert "append" not in token["artifactUpdate"]  # false: the first chunk
    # Another run's event in between: nothing, but the position moves on.
    assert fold.apply(item(6, "TokenStreamed", run_id=OTHER, part=0, delta="x")) == []
    assert fold.position == 6
    (retry,) = wire(fold.apply(item(7, "RunInterrupted", run_id=RUN, reason="lost", retry=True)))
    assert retry["statusUpdate"]["status"]["state"] == "TASK_STATE_WORKING"
    fold.apply(item(8, "RunStarted", run_id=RUN, model="m1"))
    (again,) = wire(fold.apply(item(9, "TokenStreamed", run_id=RUN, part=0, delta="4")))
    assert "append" not in again["artifactUpdate"]  # the retry starts the reply over
    (tool,) = wire(
        fold.apply(
            item(10, "ToolCallStarted", run_id=RUN, tool_call_id="t", tool_name="calc", args={})
        )
    )
    message = tool["statusUpdate"]["status"]["message"]
    assert message["role"] == "ROLE_AGENT"
    assert message["parts"] == [{"data": {"tool_call_id": "t", "tool_name": "calc", "args": {}}}]
    (progress,) = wire(
        fold.apply(item(11, "RunProgressReported", run_id=RUN, percent=50.0, note="half"))
    )
    assert progress["statusUpdate"]["metadata"]["threadlog"]["percent"] == 50.0
    (token2,) = wire(fold.apply(item(12, "TokenStreamed", run_id=RUN, part=0, delta="2")))
    assert token2["artifactUpdate"]["append"] is True
    (last,) = wire(
        fold.apply(
            item(13, "MessageCompleted", run_id=RUN, message_id="r", content="42", output={"n": 42})
        )
    )
    assert last["artifactUpdate"]["lastChunk"] is True
    assert last["artifactUpdate"]["artifact"]["parts"] == [{"data": {"n": 42}}]
    (done,) = wire(fold.apply(item(14, "RunCompleted", run_id=RUN, usage={}, cost_usd=None)))
    assert done["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert fold.ended
    assert fold.apply(item(15, "RunFailed", run_id=RUN, error="x", message="y")) == []
    task = wire([StreamResponse(task=fold.task())])[0]["task"]
    assert task["id"] == RUN and task["contextId"] == CONTEXT
    assert task["artifacts"][0]["parts"] == [{"text": "42"}, {"data": {"n": 42}}]
    assert [m["role"] for m in task["history"]] == ["ROLE_USER", "ROLE_AGENT"]
    assert task["status"]["timestamp"] == "2026-12-01T03:00:00.000001Z"
    assert [m["role"] for m in wire([StreamResponse(task=fold.task(1))])[0]["task"]["history"]] == [
        "ROLE_AGENT"
    ]
    assert "history" not in wire([StreamResponse(task=fold.task(0))])[0]["task"]


@pytest.mark.parametrize(
    ("kind", "data", "state"),
    [
        ("RunFailed", {"error": "model_error", "message": "boom"}, "TASK_STATE_FAILED"),
        ("RunInterrupted", {"reason": "lost", "retry": False}, "TASK_STATE_FAILED"),
        ("RunCancelled", {"reason": "user", "partial_content": "p"}, "TASK_STATE_CANCELED"),
    ],
)
def test_how_a_run_ends(kind: str, data: dict[str, Any], state: str) -> None:
    fold = TaskFold(RUN, CONTEXT)
    fold.apply(item(1, "MessagePosted", run_id=RUN, message_id="m", content="hi"))
    (update,) = wire(fold.apply(item(2, kind, run_id=RUN, **data)))
    assert update["statusUpdate"]["status"]["state"] == state
    assert update["statusUpdate"]["status"]["message"]["parts"][0]["text"]
    assert fold.ended


def test_json_rpc_parsing() -> None:
    with pytest.raises(RpcError) as parse:
        parse_request(b"{")
    assert parse.value.code == PARSE_ERROR
    with pytest.raises(RpcError) as batch:
        parse_request(b"[]")
    assert batch.value.code == INVALID_REQUEST
    with pytest.raises(RpcError) as version:
        parse_request(b'{"jsonrpc": "1.0", "id": 7, "method": "GetTask"}')
    assert version.value.code == INVALID_REQUEST and request_id_of(version.value) == 7
    with pytest.raises(RpcError) as no_method:
        parse_request(b'{"jsonrpc": "2.0", "id": "a"}')
    assert request_id_of(no_method.value) == "a"
    request_id, request = parse_request(b'{"jsonrpc": "2.0", "id": 0, "method": "GetTask"}')
    assert request_id == 0 and request.method == "GetTask"
    with pytest.raises(RpcError) as bad:
        params_as({"message": {"parts": []}}, SendMessageParams)
    assert bad.value.code == INVALID_PARAMS
    params = params_as(
        {"message": {"messageId": "m", "contextId": "c", "parts": [{"text": "hi"}]}},
        SendMessageParams,
    )
    assert params.message.context_id == "c" and params.message.parts[0].text == "hi"
