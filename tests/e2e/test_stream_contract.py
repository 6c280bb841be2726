"""The JetStream stream as a contract (docs/stream.md): exactly the store's events in
order, with the documented subjects, headers and payload schema, and a durable
consumer (examples/analytics_consumer.py) that survives a kill without counting twice."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema_rs
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.e2e.conftest import SettingsFactory
from tests.e2e.test_serve import ServeProcess, workdir  # noqa: F401 (a fixture)
from tests.servers import NatsNames
from tests.support import (
    LiveServer,
    as_stored,
    create_conversation,
    post_message,
    stored_events,
)
from tests.support import wait_for_run_end as wait_for_end
from threadlog.infra.settings import Settings
from threadlog.infra.store.eventstore import open_service
from threadlog.infra.stream.embedded import free_port
from threadlog.infra.stream.nats import (
    HEADER_CONVERSATION,
    HEADER_GLOBAL_POSITION,
    HEADER_MSG_ID,
    HEADER_POSITION,
    HEADER_SCHEMA_VERSION,
    HEADER_TYPE,
    StreamNames,
)

ROOT = Path(__file__).parents[2]
CONSUMER = ROOT / "examples" / "analytics_consumer.py"
SCHEMA = ROOT / "docs" / "schemas" / "events.schema.json"


@dataclass(frozen=True)
class Received:
    sequence: int
    subject: str
    headers: dict[str, str]
    payload: dict[str, Any]


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("analytics_consumer", CONSUMER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def names_of(nats_names: NatsNames) -> StreamNames:
    return StreamNames(stream=nats_names.stream, prefix=nats_names.subject_prefix)


def converse(client: httpx.Client, agent: str, prompts: list[str]) -> str:
    """A conversation with `agent` (the offline demo model): one run per prompt."""
    conversation_id = create_conversation(client, agent=agent, title=f"{agent} talk")
    for prompt in prompts:
        post_message(client, conversation_id, prompt)
        wait_for_end(client, conversation_id)
    return conversation_id


def run_scenario(client: httpx.Client, rounds: int = 1) -> list[str]:
    """Text runs with the default agent, tool calls with `tools-demo`."""
    return [
        converse(client, "assistant", ["hello there, tell me about streams"] * rounds),
        converse(client, "tools-demo", ["what is (2 + 3) * 7?"] * rounds),
    ]


def store_log(settings: Settings) -> list[tuple[str, int]]:
    """(event id, global position) of every stored event, in global order."""
    service = open_service(settings)
    try:
        notifications = service.recorder.select_notifications(start=1, limit=1_000_000)
        return [
            (str(service.mapper.to_domain_event(n).event_id), n.id)  # type: ignore[attr-defined]
            for n in notifications
        ]
    finally:
        service.close()


def pages(client: httpx.Client, conversations: list[str]) -> list[dict[str, Any]]:
    """Every event of `conversations` as the JSON pages serve them, in global order."""
    items = [event for c in conversations for event in stored_events(client, c)]
    return sorted(items, key=lambda event: event["global_position"])


async def _read_stream(url: str, names: StreamNames, start: int, count: int) -> list[Received]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.EXPLICIT,
        )
        subscription = await js.pull_subscribe(
            names.event_subjects, stream=names.stream, config=config
        )
        received: list[Received] = []
        while len(received) < count:
            for message in await subscription.fetch(min(200, count - len(received)), timeout=5):
                headers = dict(message.headers or {})
                payload = json.loads(message.data)
                sequence = message.metadata.sequence.stream
                received.append(Received(sequence, message.subject, headers, payload))
                await message.ack()
        return received
    finally:
        await nc.close()


def read_stream(url: str, names: StreamNames, *, start: int, count: int) -> list[Received]:
    return asyncio.run(_read_stream(url, names, start, count))


def stream_state(url: str, names: StreamNames) -> tuple[int, int]:
    """(messages, last sequence) of the stream."""

    async def info() -> tuple[int, int]:
        nc = await nats.connect(url)
        try:
            state = (await nc.jetstream().stream_info(names.stream)).state
            return state.messages, state.last_seq
        finally:
            await nc.close()

    return asyncio.run(info())


def wait_for_relay(url: str, names: StreamNames, count: int) -> None:
    deadline = time.monotonic() + 30
    while stream_state(url, names)[0] < count:
        assert time.monotonic() < deadline, "the relay did not publish every event"
        time.sleep(0.05)


def test_a_consumer_from_the_first_sequence_receives_exactly_the_stores_events_in_order(
    make_settings: SettingsFactory, nats_url: str, nats_names: NatsNames
) -> None:
    settings, names = make_settings(), names_of(nats_names)
    with LiveServer(settings) as server, server.client() as client:
        conversations = run_scenario(client)
        served = pages(client, conversations)
        stored = store_log(settings)
        wait_for_relay(nats_url, names, len(stored))
        received = read_stream(nats_url, names, start=1, count=len(stored))
        assert stream_state(nats_url, names)[0] == len(stored)  # and nothing after them
    assert [
        (r.headers[HEADER_MSG_ID], int(r.headers[HEADER_GLOBAL_POSITION])) for r in received
    ] == (stored)
    # The payload is the served event with its content as stored: sealed.
    assert [r.payload for r in received] == [as_stored(event) for event in served]
    sequences = [r.sequence for r in received]
    assert sequences == sorted(set(sequences))
    assert all(r.sequence <= r.payload["global_position"] for r in received)


def test_headers_and_subjects_repeat_the_payloads_envelope(
    make_settings: SettingsFactory, nats_url: str, nats_names: NatsNames
) -> None:
    settings, names = make_settings(), names_of(nats_names)
    with LiveServer(settings) as server, server.client() as client:
        run_scenario(client)
        count = len(store_log(settings))
        wait_for_relay(nats_url, names, count)
        received = read_stream(nats_url, names, start=1, count=count)
    for item in received:
        event = item.payload
        assert (
            item.subject
            == f"{names.prefix}.conversation.{event['conversation_id']}.{event['type']}"
        )
        assert item.headers == {
            HEADER_MSG_ID: event["id"],
            HEADER_TYPE: event["type"],
            HEADER_SCHEMA_VERSION: str(event["schema_version"]),
            HEADER_POSITION: str(event["position"]),
            HEADER_GLOBAL_POSITION: str(event["global_position"]),
            HEADER_CONVERSATION: event["conversation_id"],
            # nats-py sends it with `stream=`: the server refuses a publish to another stream.
            "Nats-Expected-Stream": names.stream,
        }


def test_every_published_payload_matches_the_checked_in_schema(
    make_settings: SettingsFactory, nats_url: str, nats_names: NatsNames
) -> None:
    settings, names = make_settings(), names_of(nats_names)
    with LiveServer(settings) as server, server.client() as client:
        conversations = run_scenario(client)
        renamed = client.patch(
            f"/v1/conversations/{conversations[0]}", json={"title": "renamed", "archived": True}
        )
        assert renamed.status_code == 200, renamed.text
        count = len(store_log(settings))
        wait_for_relay(nats_url, names, count)
        received = read_stream(nats_url, names, start=1, count=count)
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text(encoding="utf-8")))
    for item in received:
        errors = [error.message for error in validator.iter_errors(item.payload)]
        assert errors == [], f"{item.payload['type']}: {errors}"
    kinds = {item.payload["type"] for item in received}
    assert {
        "ConversationStarted",
        "ConversationRenamed",
        "ConversationArchived",
        "MessagePosted",
        "RunStarted",
        "TokenStreamed",
        "ToolCallStarted",
        "ToolCallCompleted",
        "MessageCompleted",
        "RunCompleted",
    } <= kinds


def test_starting_after_a_global_position_delivers_exactly_the_later_events(
    make_settings: SettingsFactory, nats_url: str, nats_names: NatsNames
) -> None:
    settings, names = make_settings(), names_of(nats_names)
    with LiveServer(settings) as server, server.client() as client:
        run_scenario(client)
        stored = store_log(settings)
        wait_for_relay(nats_url, names, len(stored))
    after = stored[len(stored) // 2][1]
    later = [row for row in stored if row[1] > after]

    async def start() -> int:
        nc = await nats.connect(nats_url)
        try:
            found: int = await example().first_sequence_after(nc.jetstream(), names.stream, after)
            return found
        finally:
            await nc.close()

    received = read_stream(nats_url, names, start=asyncio.run(start()), count=len(later))
    assert [
        (r.headers[HEADER_MSG_ID], int(r.headers[HEADER_GLOBAL_POSITION])) for r in received
    ] == (later)


def tokens_per_agent_minute(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """What the consumer must count, from the stored events: TokenStreamed per agent per minute."""
    agents = {e["conversation_id"]: e["data"]["agent"] for e in events if e["type"] == "RunStarted"}
    counts: Counter[tuple[str, str]] = Counter()
    for event in events:
        if event["type"] == "TokenStreamed":
            moment = datetime.fromisoformat(event["timestamp"]).astimezone(UTC)
            counts[agents[event["conversation_id"]], moment.strftime("%Y-%m-%dT%H:%MZ")] += 1
    table: dict[str, dict[str, int]] = {}
    for (agent, minute), count in counts.items():
        table.setdefault(agent, {})[minute] = count
    return table


def consumer_command(nats_url: str, names: StreamNames, state: Path, durable: str) -> list[str]:
    return [
        sys.executable,
        str(CONSUMER),
        *("--nats-url", nats_url, "--stream", names.stream, "--prefix", names.prefix),
        *("--durable", durable, "--state", str(state)),
        *("--batch", "3", "--idle-exit", "3"),
    ]


def saved(state: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"last_global_position": 0}
    return document


def kill_mid_way(command: list[str], state: Path) -> int:
    """Starts the consumer, SIGKILLs it once it has saved some progress; that position."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while saved(state)["last_global_position"] == 0:
            assert process.poll() is None and time.monotonic() < deadline, "no progress saved"
            time.sleep(0.001)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    position: int = saved(state)["last_global_position"]
    return position


def test_the_analytics_consumer_counts_tokens_per_agent_once_across_a_kill_and_restarts(
    make_settings: SettingsFactory, nats_url: str, nats_names: NatsNames, tmp_path: Path
) -> None:
    settings, names = make_settings(), names_of(nats_names)
    with LiveServer(settings) as server, server.client() as client:
        events = pages(client, run_scenario(client, rounds=3))
        wait_for_relay(nats_url, names, len(store_log(settings)))
    expected = tokens_per_agent_minute(events)
    last = events[-1]["global_position"]
    state = tmp_path / "analytics.json"

    # What a relay restarted after the duplicate window would add: events already there.
    republish_tokens(nats_url, names, events, count=5)

    killed_at = kill_mid_way(consumer_command(nats_url, names, state, "analytics"), state)
    assert 0 < killed_at < last
    restarted = subprocess.run(
        consumer_command(nats_url, names, state, "analytics"), capture_output=True, text=True
    )
    assert restarted.returncode == 0, restarted.stderr
    skipped = re.findall(r"skipped (\d+) already applied", restarted.stderr)
    assert sum(int(number) for number in skipped) == 5  # the republished ones
    assert saved(state)["tokens"] == expected
    assert saved(state)["last_global_position"] == last
    assert set(expected) == {"assistant", "tools-demo"}
    for agent in expected:
        assert agent in restarted.stdout

    # Started again, it resumes after the saved position: nothing to skip or count again.
    again = subprocess.run(
        consumer_command(nats_url, names, state, "analytics"), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "skipped" not in again.stderr
    assert saved(state)["tokens"] == expected


def republish_tokens(
    url: str, names: StreamNames, events: list[dict[str, Any]], *, count: int
) -> None:
    """Publishes the last `count` TokenStreamed events again, as the relay would have
    after its duplicate window (a new `Nats-Msg-Id` stands for the expired window)."""
    tokens = [event for event in events if event["type"] == "TokenStreamed"][-count:]

    async def publish() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for event in tokens:
                headers = {
                    HEADER_MSG_ID: f"{event['id']}-again",
                    HEADER_TYPE: event["type"],
                    HEADER_SCHEMA_VERSION: str(event["schema_version"]),
                    HEADER_POSITION: str(event["position"]),
                    HEADER_GLOBAL_POSITION: str(event["global_position"]),
                    HEADER_CONVERSATION: event["conversation_id"],
                }
                subject = names.conversation_subject(event["conversation_id"], event["type"])
                await js.publish(subject, json.dumps(event).encode(), headers=headers)
        finally:
            await nc.close()

    asyncio.run(publish())


def test_the_example_consumer_reads_the_embedded_nats_of_threadlog_serve(
    workdir: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    server = ServeProcess(workdir, free_port())
    try:
        [key] = server.printed_keys()
        headers = {"X-API-Key": key}
        with httpx.Client(base_url=server.base_url, timeout=15, headers=headers) as client:
            events = pages(client, run_scenario(client))
        # As docs/stream.md says: the `runtime.started` log line names the NATS URL.
        started = next(
            line for line in server.log.read_text().splitlines() if "runtime.started" in line
        )
        url = json.loads(started)["nats"]
        command = [sys.executable, str(CONSUMER), "--nats-url", url, "--idle-exit", "3"]
        state = workdir / "analytics-state.json"  # the default --state, in its working folder
        deadline = time.monotonic() + 30
        while True:  # until the relay has published the last event
            consumed = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
            assert consumed.returncode == 0, consumed.stderr
            if saved(state)["last_global_position"] == events[-1]["global_position"]:
                break
            assert time.monotonic() < deadline, "the consumer never saw the last event"
    finally:
        server.stop()
    expected = tokens_per_agent_minute(events)
    assert saved(state)["tokens"] == expected
    for agent, minutes in expected.items():
        for minute, count in minutes.items():
            assert re.search(rf"^{agent} +{minute} +{count}$", consumed.stdout, re.MULTILINE)
