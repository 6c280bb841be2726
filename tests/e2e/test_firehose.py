"""The firehose, GET /v1/stream, through real HTTP on SQLite and on PostgreSQL:
filters, resuming by global position, and a slow client's disconnection.

Events are written through the domain by a second service on the same store (as
another process would).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx

from tests.e2e.conftest import SettingsFactory
from tests.histories import USER, Run, ask
from tests.histories import start_conversation as start_owned
from tests.support import LiveServer, SSEEvent, parse_sse, read_sse, scripted_model
from threadlog.domain.application import ConversationService
from threadlog.domain.events import ConversationEvent
from threadlog.infra.store.eventstore import open_service

STREAM = "/v1/stream"


@dataclass
class Site:
    server: LiveServer
    analyst: httpx.Client
    analyst_key: str
    service: ConversationService


@contextmanager
def serving(make_settings: SettingsFactory, **changes: Any) -> Iterator[Site]:
    settings = make_settings(**changes)
    with LiveServer(settings, scripted_model(["ok"])) as server, server.client() as admin:
        user = admin.post("/v1/admin/users", json={"username": "ana", "roles": ["analyst"]})
        key = admin.post(f"/v1/admin/users/{user.json()['id']}/keys", json={}).json()["key"]
        service = open_service(settings)
        try:
            with server.client(key=key) as analyst:
                yield Site(server, analyst, key, service)
        finally:
            service.close()


def stored(service: ConversationService) -> list[tuple[int, ConversationEvent]]:
    """Every event in the store with its global position."""
    notifications = service.recorder.select_notifications(start=1, limit=100_000)
    return [
        (n.id, cast(ConversationEvent, service.mapper.to_domain_event(n))) for n in notifications
    ]


def up_to(position: int) -> Any:
    return lambda event: event.id >= position


def test_the_stream_sends_only_the_event_types_and_agents_asked_for(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        writer = start_owned(site.service, agent="writer")
        helper = start_owned(site.service, agent="helper")
        for conversation_id in (writer, helper, writer):
            ask(site.service, conversation_id, "hi", Run(reply="ok"))
        kinds = {"MessagePosted", "RunCompleted"}
        expected = [
            position
            for position, event in stored(site.service)
            if type(event).__name__ in kinds and event.originator_id == writer
        ]
        everything = stored(site.service)[-1][0]
        filtered = read_sse(
            site.analyst,
            f"{STREAM}?types=MessagePosted,RunCompleted&agents=writer",
            until=up_to(expected[-1]),
        )
        unfiltered = read_sse(site.analyst, STREAM, until=up_to(everything))
    assert [e.id for e in filtered] == expected
    assert {e.event for e in filtered} == kinds
    assert all(e.data["conversation_id"] == str(writer) for e in filtered)
    assert [e.id for e in unfiltered] == list(range(1, everything + 1))
    assert all(e.data["global_position"] == e.id for e in unfiltered)


def test_resuming_with_last_event_id_sends_the_rest_exactly_once(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        conversation_id = start_owned(site.service)
        ask(site.service, conversation_id, "first")
        first = read_sse(site.analyst, STREAM, until=up_to(3))
        ask(site.service, conversation_id, "second")
        last = stored(site.service)[-1][0]
        rest = read_sse(
            site.analyst, STREAM, until=up_to(last), headers={"Last-Event-ID": str(first[-1].id)}
        )
        by_query = read_sse(site.analyst, f"{STREAM}?after={last - 1}", until=up_to(last))
    assert [e.id for e in first + rest] == list(range(1, last + 1))
    assert [e.id for e in by_query] == [last]


def test_live_events_arrive_after_the_stored_ones(make_settings: SettingsFactory) -> None:
    with serving(make_settings) as site:
        conversation_id = start_owned(site.service)
        received: list[SSEEvent] = []
        with site.analyst.stream("GET", STREAM, headers={"accept": "text/event-stream"}) as r:
            assert r.status_code == 200
            for event in parse_sse(r.iter_lines()):
                received.append(event)
                if event.id == 1:
                    ask(site.service, conversation_id, "while you watch")
                if event.event == "RunCompleted":
                    break
    assert [e.id for e in received] == list(range(1, len(received) + 1))


def pending_bytes(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    count: int = struct.unpack("i", raw)[0]
    return count


def wait_until_the_server_is_blocked(sock: socket.socket, settle_seconds: float = 1.0) -> None:
    """The client's receive buffer stopped filling: the server waits on a full socket."""
    deadline = time.monotonic() + 60
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = pending_bytes(sock)
        if now != last:
            last, since = now, time.monotonic()
        elif now > 0 and time.monotonic() - since >= settle_seconds:
            return
        time.sleep(0.05)
    raise TimeoutError("the server never stopped sending")


def test_a_client_that_stops_reading_is_told_it_fell_behind_and_disconnected(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings, stream_queue_size=2) as site:
        # ~12 MB of events: more than the sockets between us hold.
        for n in range(60):
            site.service.start_conversation(
                owner="bulk",
                agent="a",
                title=f"big {n}",
                metadata={"blob": "x" * 200_000},
                cause=USER,
            )
        last = stored(site.service)[-1][0]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", site.server.port))
        sock.sendall(
            f"GET {STREAM} HTTP/1.0\r\nX-API-Key: {site.analyst_key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        wait_until_the_server_is_blocked(sock)
        sock.settimeout(30)
        received = bytearray()
        while chunk := sock.recv(1 << 20):  # the server closes the stream after its error
            received.extend(chunk)
        sock.close()
        body = received.split(b"\r\n\r\n", 1)[1].decode()
        events = list(parse_sse(iter(body.splitlines())))
        final = body.rstrip("\n").rsplit("\n\n", 1)[-1]
        # A queue of two events overflows for any reader of 200 kB events: each
        # reconnection gets further, and nothing arrives twice.
        resumed: list[SSEEvent] = []
        while (resumed or events)[-1].id < last:
            cursor = (resumed or events)[-1].id
            more = read_sse(
                site.analyst, STREAM, until=up_to(last), headers={"Last-Event-ID": str(cursor)}
            )
            assert more, "a reconnection made no progress"
            resumed.extend(more)
    assert received.startswith(b"HTTP/1.1 200")
    assert final.startswith("event: error\ndata: ")
    assert '"error":"fell_behind"' in final
    assert f"Last-Event-ID: {events[-1].id}" in final
    assert [e.id for e in events + resumed] == list(range(1, last + 1))


def test_the_stream_is_for_analysts_and_admins_and_only_as_event_stream(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        start_owned(site.service)
        as_json = site.analyst.get(STREAM, headers={"accept": "application/json"})
        with site.server.client() as admin:
            by_admin = read_sse(admin, STREAM, until=up_to(1))
            user = admin.post("/v1/admin/users", json={"username": "plain"}).json()
            key = admin.post(f"/v1/admin/users/{user['id']}/keys", json={}).json()["key"]
        with site.server.client(key=key) as plain:
            forbidden = plain.get(STREAM, headers={"accept": "text/event-stream"})
    assert as_json.status_code == 406 and as_json.json()["error"] == "not_acceptable"
    assert [e.event for e in by_admin] == ["ConversationStarted"]
    assert forbidden.status_code == 403


def test_bad_stream_parameters_get_a_400_naming_the_parameter(
    make_settings: SettingsFactory,
) -> None:
    cases = [
        ({"types": "Nope"}, {}, "types"),
        ({"after": "x"}, {}, "after"),
        ({}, {"Last-Event-ID": "-3"}, "Last-Event-ID"),
        ({"agent": "a"}, {}, "agent"),
    ]
    with serving(make_settings) as site:
        answers = [
            (
                site.analyst.get(
                    STREAM, params=params, headers={**headers, "accept": "text/event-stream"}
                ),
                name,
            )
            for params, headers, name in cases
        ]
    for answer, name in answers:
        assert answer.status_code == 400, (name, answer.text)
        assert name in answer.json()["message"], answer.text


def test_clients_past_the_limit_get_503_until_one_leaves(make_settings: SettingsFactory) -> None:
    with serving(make_settings, stream_max_clients=1) as site:
        start_owned(site.service)
        with site.analyst.stream("GET", STREAM, headers={"accept": "text/event-stream"}) as held:
            assert held.status_code == 200
            events = parse_sse(held.iter_lines())  # kept: closing it would disconnect
            next(events)  # it is streaming
            refused = site.analyst.get(STREAM, headers={"accept": "text/event-stream"})
        deadline = time.monotonic() + 30
        while (again := read_sse_or_status(site.analyst)) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)  # the server notices the disconnection at its next write
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert again == 200


def read_sse_or_status(client: httpx.Client) -> int:
    with client.stream("GET", STREAM, headers={"accept": "text/event-stream"}) as answer:
        if answer.status_code == 200:
            next(parse_sse(answer.iter_lines()))
        return answer.status_code


def test_an_idle_stream_sends_heartbeats(make_settings: SettingsFactory) -> None:
    with (
        serving(make_settings) as site,
        site.analyst.stream("GET", STREAM, headers={"accept": "text/event-stream"}) as answer,
    ):
        lines = answer.iter_lines()
        beat = next(line for line in lines if line.startswith(":"))
    assert beat == ": heartbeat"


def test_after_latest_streams_only_what_happens_from_now_on(
    make_settings: SettingsFactory,
) -> None:
    with serving(make_settings) as site:
        conversation_id = start_owned(site.service)
        ask(site.service, conversation_id, "before anyone watched")
        before = stored(site.service)[-1][0]
        received: list[SSEEvent] = []
        with site.analyst.stream(
            "GET", f"{STREAM}?after=latest", headers={"accept": "text/event-stream"}
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)  # retry: the stream is open, from the newest event on
            ask(site.service, conversation_id, "while you watch")
            for event in parse_sse(lines):
                received.append(event)
                if event.event == "RunCompleted":
                    break
    assert received and received[0].id == before + 1
    assert [e.id for e in received] == list(range(before + 1, before + 1 + len(received)))
