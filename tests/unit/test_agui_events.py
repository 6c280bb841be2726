"""The mapping of stored events to AG-UI events (http/agui_events.py) on its own: the
cases an end-to-end run rarely produces (a retried attempt, an interrupted run, a
structured output, progress), each event strictly valid for `ag-ui-protocol`."""

from __future__ import annotations

from typing import Any

import msgspec
from ag_ui.core import Event
from pydantic import BaseModel, TypeAdapter

from threadlog.http.agui_events import AguiRun, Cursor
from threadlog.infra.stream.feed import FeedEvent

EVENT = TypeAdapter(Event)
RUN = "run-1"


def _no_extras(model: Any) -> None:
    if isinstance(model, BaseModel):
        assert not model.model_extra, model.model_extra
        for name in type(model).model_fields:
            _no_extras(getattr(model, name))
    elif isinstance(model, list):
        for item in model:
            _no_extras(item)


def feed(position: int, kind: str, **data: Any) -> FeedEvent:
    payload = {
        "type": kind,
        "position": position,
        "timestamp": "2026-12-01T03:00:00+00:00",
        "data": {"run_id": RUN, **data},
    }
    return FeedEvent(position, kind, msgspec.json.encode(payload))


def mapped(run: AguiRun, items: list[FeedEvent]) -> list[dict[str, Any]]:
    events = [frame.event for item in items for frame in run.frames(item)]
    for event in events:
        parsed = EVENT.validate_python(event)
        _no_extras(parsed)
        assert parsed.model_dump(mode="json", by_alias=True) == event
    return events


def test_a_retried_attempt_goes_on_and_an_interrupted_run_is_a_run_error() -> None:
    run = AguiRun("thread", "agui-run", RUN)
    events = mapped(
        run,
        [
            feed(2, "RunStarted", message_id="m", agent="a", model="demo", settings={}),
            feed(3, "TokenStreamed", part=0, delta="Hel"),
            feed(4, "RunInterrupted", reason="worker died", retry=True),
            feed(5, "RunStarted", message_id="m", agent="a", model="demo", settings={}),
            feed(6, "TokenStreamed", part=0, delta="Hello"),
            feed(7, "RunInterrupted", reason="server stopped", retry=False),
            feed(8, "TokenStreamed", part=0, delta="late"),
        ],
    )
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "CUSTOM",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    assert events[1]["messageId"] != events[5]["messageId"]
    assert events[4]["name"] == "threadlog.RunInterrupted"
    assert events[-1]["code"] == "interrupted" and run.ended


def test_structured_output_progress_and_usage() -> None:
    run = AguiRun("thread", "agui-run", None)  # adopts the first run it sees
    events = mapped(
        run,
        [
            feed(2, "MessagePosted", message_id="u", role="user", content="q"),
            feed(3, "RunStarted", message_id="u", agent="a", model="demo", settings={}),
            feed(4, "RunProgressReported", percent=50.0, note="half"),
            feed(5, "OutputPartial", output={"answer": 4}),
            feed(
                6,
                "MessageCompleted",
                message_id="reply",
                role="assistant",
                content='{"answer": 42}',
                model_messages="[]",
                output={"answer": 42},
            ),
            feed(
                7,
                "RunCompleted",
                usage={"input_tokens": 3, "output_tokens": 5, "requests": 1},
                cost_usd=None,
                duration_ms=1.0,
                time_to_first_token_ms=None,
            ),
        ],
    )
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "CUSTOM",
        "CUSTOM",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    finished = events[-1]
    assert finished["result"] == {"answer": 42}
    assert finished["usage"] == [
        {"model": "demo", "inputTokens": 3, "outputTokens": 5, "totalTokens": 8}
    ]
    assert events[3]["messageId"] == "reply"
    # Cursors: `N` for the last event made of N, `N.k` before it.
    assert [e["metadata"]["threadlog"]["cursor"] for e in events[3:]] == ["6.0", "6.1", "6", "7"]


def test_the_opening_reopens_what_is_open_at_the_cursor() -> None:
    run = AguiRun("thread", "agui-run", RUN)
    run.rebuild(
        [
            feed(2, "TokenStreamed", part=0, delta="a"),
            feed(3, "ToolCallStarted", tool_call_id="c1", tool_name="clock", args={}),
            feed(4, "TokenStreamed", part=1, delta="b"),
        ]
    )
    opening = [frame.event for frame in run.opening(Cursor(4))]
    assert [e["type"] for e in opening] == ["RUN_STARTED", "TEXT_MESSAGE_START", "STEP_STARTED"]
    assert opening[1]["messageId"] == f"{RUN}.1"
    assert {e["metadata"]["threadlog"]["cursor"] for e in opening} == {"4"}
    for event in opening:
        _no_extras(EVENT.validate_python(event))
    assert Cursor.parse("12.3") == Cursor(12, 3) and str(Cursor(12, 3)) == "12.3"
